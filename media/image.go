package media

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"

	"github.com/warblerim/warbler/storage"
)

// describeImage fills in the dimensions of a PNG, JPEG or GIF (the
// standard library's codecs; the first frame of a GIF) and makes its
// thumbnail next to the blob, if there is none yet: a JPEG for JPEGs, a
// PNG otherwise (keeping transparency), fitting in ThumbSize x ThumbSize
// and never larger than the image. Other types are left alone. An image
// the codecs cannot read, or one larger than MaxPixels, gets no thumbnail
// (and no dimensions if even its header is unreadable); the file is
// stored all the same.
func (s *Service) describeImage(rec *storage.File, blob string) error {
	var decode func(*bufio.Reader) (image.Image, error)
	var config func(*bufio.Reader) (image.Config, error)
	thumbType := "image/png"
	switch rec.Type {
	case "image/png":
		decode = func(r *bufio.Reader) (image.Image, error) { return png.Decode(r) }
		config = func(r *bufio.Reader) (image.Config, error) { return png.DecodeConfig(r) }
	case "image/jpeg":
		decode = func(r *bufio.Reader) (image.Image, error) { return jpeg.Decode(r) }
		config = func(r *bufio.Reader) (image.Config, error) { return jpeg.DecodeConfig(r) }
		thumbType = "image/jpeg"
	case "image/gif":
		decode = func(r *bufio.Reader) (image.Image, error) { return gif.Decode(r) }
		config = func(r *bufio.Reader) (image.Config, error) { return gif.DecodeConfig(r) }
	default:
		return nil
	}
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	cfg, err := config(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("image header: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return errors.New("image has no pixels")
	}
	rec.Width, rec.Height = cfg.Width, cfg.Height
	if cfg.Width*cfg.Height > s.o.MaxPixels || cfg.Width > 1<<16 || cfg.Height > 1<<16 {
		return fmt.Errorf("image of %dx%d is too large to decode", cfg.Width, cfg.Height)
	}
	tw, th := fit(cfg.Width, cfg.Height, s.o.ThumbSize)
	thumb := s.thumbPath(rec.SHA256)
	if _, err := os.Stat(thumb); err == nil {
		// The same content was stored before; so was its thumbnail.
		rec.Thumb, rec.ThumbWidth, rec.ThumbHeight = thumbType, tw, th
		return nil
	}
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	img, err := decode(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("decode image: %w", err)
	}
	small := Scale(img, tw, th)
	tmp, err := os.CreateTemp(s.o.Dir+string(os.PathSeparator)+"tmp", "thumb-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	if thumbType == "image/jpeg" {
		err = jpeg.Encode(w, small, &jpeg.Options{Quality: 80})
	} else {
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(w, small)
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("encode thumbnail: %w", err)
	}
	if err := os.Rename(tmp.Name(), thumb); err != nil {
		return err
	}
	rec.Thumb, rec.ThumbWidth, rec.ThumbHeight = thumbType, tw, th
	return nil
}

// fit scales w x h down to fit in a box x box square, keeping the aspect
// ratio, each side at least 1; an image that fits already keeps its size.
func fit(w, h, box int) (int, int) {
	if w <= box && h <= box {
		return w, h
	}
	if w >= h {
		return box, max(1, (h*box+w/2)/w)
	}
	return max(1, (w*box+h/2)/h), box
}

// Scale resamples img to w x h with a box filter: each output pixel is the
// average of the source pixels it covers (weighted by coverage), which is
// what downscaling photos needs and costs one pass over the source. The
// source is first converted to RGBA with image/draw, which has fast paths
// for the codecs' own image types.
func Scale(img image.Image, w, h int) *image.NRGBA {
	b := img.Bounds()
	src := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(src, src.Bounds(), img, b.Min, draw.Src)
	sw, sh := b.Dx(), b.Dy()
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	// Accumulate premultiplied channels per output pixel, row by row.
	acc := make([]float64, w*4)
	wts := make([]float64, w)
	fx := float64(sw) / float64(w)
	fy := float64(sh) / float64(h)
	for dy := 0; dy < h; dy++ {
		clear(acc)
		clear(wts)
		y0, y1 := float64(dy)*fy, float64(dy+1)*fy
		for sy := int(y0); sy < sh && float64(sy) < y1; sy++ {
			wy := min(y1, float64(sy+1)) - max(y0, float64(sy))
			row := src.Pix[sy*src.Stride:]
			for dx := 0; dx < w; dx++ {
				x0, x1 := float64(dx)*fx, float64(dx+1)*fx
				for sx := int(x0); sx < sw && float64(sx) < x1; sx++ {
					wt := wy * (min(x1, float64(sx+1)) - max(x0, float64(sx)))
					p := row[sx*4 : sx*4+4]
					acc[dx*4] += wt * float64(p[0])
					acc[dx*4+1] += wt * float64(p[1])
					acc[dx*4+2] += wt * float64(p[2])
					acc[dx*4+3] += wt * float64(p[3])
					wts[dx] += wt
				}
			}
		}
		out := dst.Pix[dy*dst.Stride:]
		for dx := 0; dx < w; dx++ {
			if wts[dx] == 0 {
				continue
			}
			a := acc[dx*4+3] / wts[dx]
			if a <= 0 {
				continue
			}
			// un-premultiply into NRGBA
			out[dx*4] = clamp8(acc[dx*4] / wts[dx] * 255 / a)
			out[dx*4+1] = clamp8(acc[dx*4+1] / wts[dx] * 255 / a)
			out[dx*4+2] = clamp8(acc[dx*4+2] / wts[dx] * 255 / a)
			out[dx*4+3] = clamp8(a)
		}
	}
	return dst
}

func clamp8(v float64) uint8 {
	v += 0.5
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}
