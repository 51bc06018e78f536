// Package media stores the files that messages carry: uploads, their
// content-addressed blobs, image dimensions and thumbnails, downloads
// checked against conversation membership, and the sweeping of orphans.
// It knows nothing of HTTP or MQTT: the api package serves it, and the
// chat service calls Attach when a message refers to an upload.
//
// # Storage
//
// Content lives under the media directory (the data dir's "media/"):
//
//	blobs/ab/cd/abcd...        the bytes, named by their SHA-256 (hex)
//	blobs/ab/cd/abcd....thumb  an image's thumbnail
//	uploads/{app}.{id}         the bytes of a resumable upload so far
//	tmp/                       single-shot uploads while they arrive
//
// The same bytes uploaded twice are stored once; each upload still gets
// its own record (storage.File: uploader, conversations, name, sniffed
// type, size, dimensions), and a blob is removed with its last record. The
// type is never taken from the client: it is sniffed from the first 512
// bytes (http.DetectContentType).
//
// # Access
//
// A file may be read by its uploader and by the members of every
// conversation it is for: the one named at upload (the uploader must be a
// member), and every conversation a message referring to it was sent to,
// provided they may read the latest such message there (a group whose
// history is visible from the join hides files sent before a member
// joined). Anyone else, and every user of another app, is told it does
// not exist.
//
// # Resumable uploads
//
// Create announces the size (and optionally the SHA-256); Append writes
// pieces in order, each starting at the current offset, and keeps
// whatever arrived before a connection dropped; Offset tells a client
// where to resume. The piece that completes the upload turns it into a
// file, checked against the announced digest.
//
// # Orphans
//
// An upload no message has referred to within OrphanTTL (24 h by default)
// is removed by Sweep, as is a resumable upload left unfinished that long.
// The store keeps an index of the files no message refers to, so a sweep
// reads only those.
//
// A deployment of several processes needs the media directory on shared
// storage; the blob lock here is per process.
package media
