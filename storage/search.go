package storage

// Search index contracts: per conversation, posting lists from terms to
// the messages (by seq) that contain them, and how far the index has read
// the conversation's log. The search package is the only caller; the
// index is derived from the log and can always be rebuilt from it.

import "context"

// IndexDoc is one message as the index sees it.
type IndexDoc struct {
	Conv  string
	Seq   uint64
	TS    int64 // unix ms
	From  string
	Len   int            // length in tokens
	Terms map[string]int // term -> occurrences
}

// Posting is one entry of a term's posting list.
type Posting struct {
	Seq  uint64
	TS   int64
	From string
	TF   int // occurrences of the term
	Len  int // the message's length in tokens
}

// SearchIndex stores the search index.
type SearchIndex interface {
	// PutDoc indexes doc, replacing what was indexed for its conv and
	// seq before, and moves the conversation's cursor to cursor if that
	// is higher; atomically. doc may be nil to move only the cursor, and
	// doc.Terms empty to remove the message from the index.
	PutDoc(ctx context.Context, app string, doc *IndexDoc, conv string, cursor uint64) error
	// RemoveDoc removes a message from the index (nothing if absent).
	RemoveDoc(ctx context.Context, app, conv string, seq uint64) error
	// Postings returns the postings of term in conv with seq >= from,
	// newest first, at most limit.
	Postings(ctx context.Context, app, conv, term string, from uint64, limit int) ([]Posting, error)
	// Cursor is the highest seq of conv the index has read (0 if none).
	Cursor(ctx context.Context, app, conv string) (uint64, error)
	// DropConv removes everything indexed for conv, cursor included (a
	// deleted conversation).
	DropConv(ctx context.Context, app, conv string) error
}
