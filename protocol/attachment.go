package protocol

// Attachment describes an uploaded file that a message refers to. A device
// uploads the file over HTTP first (docs/PROTOCOL.md, "Attachments"), then
// sends a message with "attachment": the upload's ID. The server checks
// that the sender may use the file, links it to the conversation (which is
// what lets the other members download it) and puts this description into
// the stored message, so every receiver gets the same facts the server
// established: the sniffed type, the size, and for images the dimensions
// and a thumbnail.
//
// URL and Thumb are paths on the server's HTTP API, relative to its base
// URL; a download needs the reader's access token.
type Attachment struct {
	ID     string `json:"id"`
	URL    string `json:"url"`
	Type   string `json:"type"` // MIME type sniffed from the content
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Name   string `json:"name,omitempty"`
	// Width and Height are an image's pixel dimensions.
	Width  int `json:"width,omitempty"`
	Height int `json:"height,omitempty"`
	// Thumb is a small JPEG or PNG of an image, ThumbWidth x ThumbHeight.
	Thumb       string `json:"thumb,omitempty"`
	ThumbWidth  int    `json:"thumb_width,omitempty"`
	ThumbHeight int    `json:"thumb_height,omitempty"`
}

// Message types whose message must carry an attachment when the server
// stores files.
const (
	TypeImage = "image"
	TypeFile  = "file"
	TypeAudio = "audio"
	TypeVideo = "video"
)

// IsAttachmentType reports whether messages of type t refer to an upload.
func IsAttachmentType(t string) bool {
	return t == TypeImage || t == TypeFile || t == TypeAudio || t == TypeVideo
}
