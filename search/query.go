package search

import (
	"strings"
	"unicode/utf8"

	"github.com/warblerim/warbler/protocol"
)

// MaxQueryTerms is the most terms a query may have.
const MaxQueryTerms = 16

// Query is a parsed search query. A message matches when it contains every
// term; In and From narrow the search to one conversation and one author.
type Query struct {
	Terms []string
	In    string
	From  string
}

// ParseQuery parses what a user typed. Words are analysed as the index
// analyses text (see Terms), so "Hello, 世界" looks for hello, 世界. Two
// filters may be given as words of the form name:value:
//
//	in:CONV    only conversation CONV
//	from:USER  only messages USER sent
//
// Quotes are ignored. A query needs at least one term and may have at most
// MaxQueryTerms; it is at most protocol.MaxQueryBytes of UTF-8. Errors are
// bad_request *protocol.Error values that say what is wrong.
func ParseQuery(q string) (Query, error) {
	var out Query
	if len(q) > protocol.MaxQueryBytes || !utf8.ValidString(q) {
		return out, protocol.Errorf(protocol.CodeBadRequest, "q: at most %d bytes of UTF-8", protocol.MaxQueryBytes)
	}
	seen := map[string]bool{}
	var text []string
	for _, f := range strings.Fields(q) {
		name, val, ok := strings.Cut(f, ":")
		switch {
		case ok && name == "in":
			if out.In != "" || !protocol.ValidID(val) {
				return out, protocol.Errorf(protocol.CodeBadRequest, "q: in: takes one conversation ID")
			}
			out.In = val
		case ok && name == "from":
			if out.From != "" || !protocol.ValidID(val) {
				return out, protocol.Errorf(protocol.CodeBadRequest, "q: from: takes one user ID")
			}
			out.From = val
		default:
			text = append(text, f)
		}
	}
	queryTerms(strings.Join(text, " "), func(t string) {
		if !seen[t] {
			seen[t] = true
			out.Terms = append(out.Terms, t)
		}
	})
	if len(out.Terms) == 0 {
		return out, protocol.Errorf(protocol.CodeBadRequest, "q: no words to search for")
	}
	if len(out.Terms) > MaxQueryTerms {
		return out, protocol.Errorf(protocol.CodeBadRequest, "q: at most %d terms", MaxQueryTerms)
	}
	return out, nil
}
