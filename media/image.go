package media

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"image/color"
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

// Scale shrinks img to w x h (no larger than img) with a box filter: each
// output pixel is the average of the block of source pixels it covers,
// which is what downscaling photos needs, in one pass of integer sums over
// the source. JPEG's YCbCr images are averaged in YCbCr, straight from
// their planes; other images are first converted to RGBA with image/draw
// and averaged with premultiplied alpha.
func Scale(img image.Image, w, h int) *image.NRGBA {
	b := img.Bounds()
	sw, sh := b.Dx(), b.Dy()
	w, h = max(1, min(w, sw)), max(1, min(h, sh))
	xs := make([]int, w+1)
	for i := range xs {
		xs[i] = i * sw / w
	}
	ys := make([]int, h+1)
	for i := range ys {
		ys[i] = i * sh / h
	}
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	if yc, ok := img.(*image.YCbCr); ok {
		for dy := 0; dy < h; dy++ {
			out := dst.Pix[dy*dst.Stride:]
			for dx := 0; dx < w; dx++ {
				var sy, scb, scr, n uint64
				for y := ys[dy]; y < ys[dy+1]; y++ {
					for x := xs[dx]; x < xs[dx+1]; x++ {
						px, py := b.Min.X+x, b.Min.Y+y
						sy += uint64(yc.Y[yc.YOffset(px, py)])
						ci := yc.COffset(px, py)
						scb += uint64(yc.Cb[ci])
						scr += uint64(yc.Cr[ci])
						n++
					}
				}
				r, g, bb := color.YCbCrToRGB(uint8((sy+n/2)/n), uint8((scb+n/2)/n), uint8((scr+n/2)/n))
				out[dx*4], out[dx*4+1], out[dx*4+2], out[dx*4+3] = r, g, bb, 255
			}
		}
		return dst
	}
	src := image.NewRGBA(image.Rect(0, 0, sw, sh))
	draw.Draw(src, src.Bounds(), img, b.Min, draw.Src)
	for dy := 0; dy < h; dy++ {
		out := dst.Pix[dy*dst.Stride:]
		for dx := 0; dx < w; dx++ {
			var sr, sg, sb, sa, n uint64
			for y := ys[dy]; y < ys[dy+1]; y++ {
				row := src.Pix[y*src.Stride+xs[dx]*4 : y*src.Stride+xs[dx+1]*4]
				for k := 0; k < len(row); k += 4 {
					sr += uint64(row[k])
					sg += uint64(row[k+1])
					sb += uint64(row[k+2])
					sa += uint64(row[k+3])
					n++
				}
			}
			if sa == 0 {
				continue
			}
			// Un-premultiply: channel sums over the alpha sum.
			out[dx*4] = uint8(min(255, (sr*255+sa/2)/sa))
			out[dx*4+1] = uint8(min(255, (sg*255+sa/2)/sa))
			out[dx*4+2] = uint8(min(255, (sb*255+sa/2)/sa))
			out[dx*4+3] = uint8((sa + n/2) / n)
		}
	}
	return dst
}
