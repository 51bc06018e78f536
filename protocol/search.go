package protocol

// This file is the search request of the chat envelope. docs/PROTOCOL.md
// ("Search") describes it in prose; package search implements it.

import (
	"encoding/json"
	"unicode/utf8"
)

// OpSearch searches the text of the messages the caller can read: q, and
// optionally conv (one conversation) and limit.
const OpSearch = "search"

// MaxQueryBytes bounds a search query.
const MaxQueryBytes = 256

// validateSearch checks a search request; ok is false for other ops.
func (r *Request) validateSearch() (err error, ok bool) {
	if r.Op != OpSearch {
		return nil, false
	}
	if r.Query == "" {
		return Errorf(CodeBadRequest, "q: required"), true
	}
	if len(r.Query) > MaxQueryBytes || !utf8.ValidString(r.Query) {
		return Errorf(CodeBadRequest, "q: at most %d bytes of UTF-8", MaxQueryBytes), true
	}
	if r.Conv != "" {
		return idErr(CheckID("conv", r.Conv)), true
	}
	return nil, true
}

// SearchHit is one message found by a search: the message as history
// returns it, where it is, and its score (higher is better).
type SearchHit struct {
	Conv    string          `json:"conv"`
	Seq     uint64          `json:"seq"`
	Score   float64         `json:"score"`
	Message json.RawMessage `json:"message"`
}

// SearchResult answers OpSearch: the best hits first. Terms are the terms
// the query was split into (what a client may highlight).
type SearchResult struct {
	Query string      `json:"q"`
	Terms []string    `json:"terms"`
	Hits  []SearchHit `json:"hits"`
	// More is set when the answer was cut short to stay within the reply
	// size limit: ask again with a narrower query or a smaller limit.
	More bool `json:"more,omitempty"`
}
