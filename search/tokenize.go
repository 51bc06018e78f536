package search

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of the analyzer.
const (
	// MaxTermBytes is the longest term; longer words are cut (on a rune
	// boundary).
	MaxTermBytes = 64
	// MaxDocTerms is the most distinct terms indexed for one message.
	MaxDocTerms = 1000
)

// cjk reports whether r belongs to a script written without spaces between
// words: Han, Hiragana, Katakana and Hangul. Runs of them are indexed as
// overlapping character bigrams (and single characters), the classic
// dictionary-free way to search Chinese, Japanese and Korean.
func cjk(r rune) bool {
	return unicode.Is(unicode.Han, r) || unicode.Is(unicode.Hiragana, r) ||
		unicode.Is(unicode.Katakana, r) || unicode.Is(unicode.Hangul, r) || r == 'ー'
}

func wordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r)
}

// token is one unit of text: a word, or a run of CJK characters.
type token struct {
	text string
	cjk  bool
}

// split cuts text into words (lower-cased letters, digits and combining
// marks; an apostrophe or hyphen inside a word splits it) and CJK runs.
// Everything else separates.
func split(text string, fn func(token)) {
	var b strings.Builder
	inCJK := false
	flush := func() {
		if b.Len() > 0 {
			fn(token{text: b.String(), cjk: inCJK})
			b.Reset()
		}
	}
	for _, r := range text {
		switch {
		case r == utf8.RuneError:
			flush()
		case cjk(r):
			if !inCJK {
				flush()
				inCJK = true
			}
			b.WriteRune(r)
		case wordRune(r):
			if inCJK {
				flush()
				inCJK = false
			}
			b.WriteRune(unicode.ToLower(r))
		default:
			flush()
		}
	}
	flush()
}

// Terms analyses text for the index: every word, and for every CJK run each
// character and each pair of neighbouring characters. It returns how often
// each term occurs and the length of the text in tokens (words plus CJK
// characters), for length normalisation. At most MaxDocTerms distinct
// terms are kept.
func Terms(text string) (tf map[string]int, length int) {
	tf = map[string]int{}
	add := func(t string) {
		if _, ok := tf[t]; ok || len(tf) < MaxDocTerms {
			tf[t]++
		}
	}
	split(text, func(t token) {
		if !t.cjk {
			length++
			add(cut(t.text))
			return
		}
		rs := []rune(t.text)
		for i, r := range rs {
			length++
			add(string(r))
			if i+1 < len(rs) {
				add(string(rs[i : i+2]))
			}
		}
	})
	return tf, length
}

// queryTerms analyses the text of a query: words as in Terms; a CJK run of
// one character is that character, a longer run its bigrams (all of which
// must match, which approximates the phrase).
func queryTerms(text string, fn func(string)) {
	split(text, func(t token) {
		if !t.cjk {
			fn(cut(t.text))
			return
		}
		rs := []rune(t.text)
		if len(rs) == 1 {
			fn(t.text)
			return
		}
		for i := 0; i+1 < len(rs); i++ {
			fn(string(rs[i : i+2]))
		}
	})
}

// cut shortens a term to MaxTermBytes on a rune boundary.
func cut(t string) string {
	if len(t) <= MaxTermBytes {
		return t
	}
	i := MaxTermBytes
	for i > 0 && !utf8.RuneStart(t[i]) {
		i--
	}
	return t[:i]
}
