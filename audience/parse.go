package audience

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits of an expression or rule.
const (
	MaxExprLen  = 4096
	MaxDepth    = 32
	MaxOperands = 64
	// MaxWindow is the longest event window a rule may ask about.
	MaxWindow = 400 * 24 * time.Hour
)

// Op is the kind of a Node.
type Op int

// Node kinds.
const (
	OpTag   Op = iota + 1 // Value is the tag
	OpAnd                 // Kids
	OpOr                  // Kids
	OpNot                 // Kids[0]
	OpAttr                // Key, Value (Cmp "=", "!=" or "" for "is set")
	OpEvent               // Event
	OpAll                 // every user
)

// Node is one node of a parsed expression.
type Node struct {
	Op    Op
	Kids  []*Node
	Key   string
	Cmp   string
	Value string
	Event *EventCond
}

// EventCond is the condition of an event(...) operand.
type EventCond struct {
	Name   string
	Within time.Duration
	Props  map[string]string
	Min    int
}

// SyntaxError is a parse error with the byte offset where it was found.
type SyntaxError struct {
	Pos int
	Msg string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("at offset %d: %s", e.Pos, e.Msg) }

// ParseTags parses a tag expression (tags, AND, OR, NOT, parentheses).
func ParseTags(src string) (*Node, error) { return parse(src, false) }

// ParseRule parses a segment rule (a tag expression whose operands may
// also be attr(...), event(...) and all).
func ParseRule(src string) (*Node, error) { return parse(src, true) }

func parse(src string, rule bool) (*Node, error) {
	if len(src) > MaxExprLen {
		return nil, &SyntaxError{0, fmt.Sprintf("longer than %d bytes", MaxExprLen)}
	}
	if !utf8.ValidString(src) {
		return nil, &SyntaxError{0, "not valid UTF-8"}
	}
	p := &parser{src: src, rule: rule}
	p.next()
	if p.tok.kind == tEOF {
		return nil, &SyntaxError{0, "empty expression"}
	}
	n, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tEOF {
		return nil, p.errf("unexpected %s", p.tok)
	}
	return n, nil
}

type tokKind int

const (
	tEOF tokKind = iota
	tWord
	tString
	tLParen
	tRParen
	tComma
	tEq
	tNe
	tAnd
	tOr
	tNot
	tErr
)

type token struct {
	kind tokKind
	text string
	pos  int
}

func (t token) String() string {
	switch t.kind {
	case tEOF:
		return "end of input"
	case tString:
		return strconv.Quote(t.text)
	case tErr:
		return t.text
	}
	return "'" + t.text + "'"
}

type parser struct {
	src      string
	off      int
	tok      token
	rule     bool
	operands int
}

func (p *parser) errf(format string, a ...any) error {
	if p.tok.kind == tErr {
		return &SyntaxError{p.tok.pos, p.tok.text}
	}
	return &SyntaxError{p.tok.pos, fmt.Sprintf(format, a...)}
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':'
}

// next scans the next token into p.tok.
func (p *parser) next() {
	for p.off < len(p.src) && (p.src[p.off] == ' ' || p.src[p.off] == '\t' || p.src[p.off] == '\n' || p.src[p.off] == '\r') {
		p.off++
	}
	start := p.off
	if p.off >= len(p.src) {
		p.tok = token{tEOF, "", start}
		return
	}
	c := p.src[p.off]
	switch {
	case c == '(':
		p.off++
		p.tok = token{tLParen, "(", start}
	case c == ')':
		p.off++
		p.tok = token{tRParen, ")", start}
	case c == ',':
		p.off++
		p.tok = token{tComma, ",", start}
	case c == '=':
		p.off++
		p.tok = token{tEq, "=", start}
	case c == '!' && p.off+1 < len(p.src) && p.src[p.off+1] == '=':
		p.off += 2
		p.tok = token{tNe, "!=", start}
	case c == '"':
		var b strings.Builder
		p.off++
		for {
			if p.off >= len(p.src) {
				p.tok = token{tErr, "unterminated string", start}
				return
			}
			c := p.src[p.off]
			if c == '"' {
				p.off++
				break
			}
			if c == '\\' {
				if p.off+1 >= len(p.src) || (p.src[p.off+1] != '"' && p.src[p.off+1] != '\\') {
					p.tok = token{tErr, `only \" and \\ escapes are allowed in a string`, p.off}
					return
				}
				c = p.src[p.off+1]
				p.off++
			} else if c < 0x20 {
				p.tok = token{tErr, "control character in string", p.off}
				return
			}
			b.WriteByte(c)
			p.off++
		}
		p.tok = token{tString, b.String(), start}
	case isWordByte(c):
		for p.off < len(p.src) && isWordByte(p.src[p.off]) {
			p.off++
		}
		w := p.src[start:p.off]
		switch strings.ToUpper(w) {
		case "AND":
			p.tok = token{tAnd, w, start}
		case "OR":
			p.tok = token{tOr, w, start}
		case "NOT":
			p.tok = token{tNot, w, start}
		default:
			p.tok = token{tWord, w, start}
		}
	default:
		r, _ := utf8.DecodeRuneInString(p.src[p.off:])
		p.tok = token{tErr, fmt.Sprintf("unexpected character %q", r), start}
	}
}

func (p *parser) or(depth int) (*Node, error) {
	n, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tOr {
		return n, nil
	}
	out := &Node{Op: OpOr, Kids: []*Node{n}}
	for p.tok.kind == tOr {
		p.next()
		k, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		out.Kids = append(out.Kids, k)
	}
	return out, nil
}

func (p *parser) and(depth int) (*Node, error) {
	n, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tAnd {
		return n, nil
	}
	out := &Node{Op: OpAnd, Kids: []*Node{n}}
	for p.tok.kind == tAnd {
		p.next()
		k, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		out.Kids = append(out.Kids, k)
	}
	return out, nil
}

func (p *parser) unary(depth int) (*Node, error) {
	if depth >= MaxDepth {
		return nil, p.errf("nested deeper than %d levels", MaxDepth)
	}
	if p.tok.kind == tNot {
		p.next()
		k, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return &Node{Op: OpNot, Kids: []*Node{k}}, nil
	}
	return p.primary(depth)
}

func (p *parser) primary(depth int) (*Node, error) {
	switch p.tok.kind {
	case tLParen:
		p.next()
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.tok.kind != tRParen {
			return nil, p.errf("expected ')', found %s", p.tok)
		}
		p.next()
		return n, nil
	case tString:
		return p.tag(p.tok.text)
	case tWord:
		w := p.tok.text
		if p.rule {
			switch strings.ToLower(w) {
			case "all":
				p.next()
				return p.operand(&Node{Op: OpAll})
			case "tag", "attr", "event":
				save := *p
				p.next()
				if p.tok.kind == tLParen {
					p.next()
					switch strings.ToLower(w) {
					case "tag":
						return p.tagCall()
					case "attr":
						return p.attr()
					default:
						return p.event()
					}
				}
				*p = save // a tag that happens to be called "tag"
			}
		}
		return p.tag(w)
	case tEOF:
		return nil, p.errf("expected a tag or '(', found end of input")
	}
	return nil, p.errf("expected a tag or '(', found %s", p.tok)
}

func (p *parser) operand(n *Node) (*Node, error) {
	p.operands++
	if p.operands > MaxOperands {
		return nil, &SyntaxError{p.tok.pos, fmt.Sprintf("more than %d operands", MaxOperands)}
	}
	return n, nil
}

func checkTag(pos int, t string) error {
	if t == "" || len(t) > 64 {
		return &SyntaxError{pos, "a tag must be 1 to 64 bytes"}
	}
	return nil
}

func (p *parser) tag(t string) (*Node, error) {
	if err := checkTag(p.tok.pos, t); err != nil {
		return nil, err
	}
	p.next()
	return p.operand(&Node{Op: OpTag, Value: t})
}

// word accepts a word or a string and returns its text.
func (p *parser) word(what string) (string, error) {
	if p.tok.kind != tWord && p.tok.kind != tString {
		return "", p.errf("expected %s, found %s", what, p.tok)
	}
	t := p.tok.text
	if t == "" || len(t) > 64 {
		return "", p.errf("%s must be 1 to 64 bytes", what)
	}
	p.next()
	return t, nil
}

func (p *parser) close() error {
	if p.tok.kind != tRParen {
		return p.errf("expected ')', found %s", p.tok)
	}
	p.next()
	return nil
}

func (p *parser) tagCall() (*Node, error) {
	pos := p.tok.pos
	t, err := p.word("a tag")
	if err != nil {
		return nil, err
	}
	if err := p.close(); err != nil {
		return nil, err
	}
	if err := checkTag(pos, t); err != nil {
		return nil, err
	}
	return p.operand(&Node{Op: OpTag, Value: t})
}

func (p *parser) attr() (*Node, error) {
	k, err := p.word("an attribute name")
	if err != nil {
		return nil, err
	}
	if err := p.close(); err != nil {
		return nil, err
	}
	n := &Node{Op: OpAttr, Key: k}
	if p.tok.kind == tEq || p.tok.kind == tNe {
		n.Cmp = p.tok.text
		p.next()
		if p.tok.kind != tWord && p.tok.kind != tString {
			return nil, p.errf("expected a value after %s, found %s", n.Cmp, p.tok)
		}
		if len(p.tok.text) > 1024 {
			return nil, p.errf("a value must be at most 1024 bytes")
		}
		n.Value = p.tok.text
		p.next()
	}
	return p.operand(n)
}

// ParseWindow parses a duration such as 30m, 12h or 7d.
func ParseWindow(s string) (time.Duration, error) {
	if len(s) < 2 {
		return 0, fmt.Errorf("a window is a number followed by m, h or d, like 7d")
	}
	n, err := strconv.Atoi(s[:len(s)-1])
	if err != nil || n <= 0 || n > 1_000_000 {
		return 0, fmt.Errorf("a window is a positive number followed by m, h or d, like 7d")
	}
	var d time.Duration
	switch s[len(s)-1] {
	case 'm':
		d = time.Duration(n) * time.Minute
	case 'h':
		d = time.Duration(n) * time.Hour
	case 'd':
		d = time.Duration(n) * 24 * time.Hour
	default:
		return 0, fmt.Errorf("a window ends in m, h or d, like 7d")
	}
	if d > MaxWindow {
		return 0, fmt.Errorf("a window is at most %d days", int(MaxWindow.Hours()/24))
	}
	return d, nil
}

func (p *parser) event() (*Node, error) {
	pos := p.tok.pos
	name, err := p.word("an event name")
	if err != nil {
		return nil, err
	}
	if !ValidEventName(name) {
		return nil, &SyntaxError{pos, "an event name is 1-64 of a-z A-Z 0-9 _ - . :"}
	}
	if p.tok.kind != tComma {
		return nil, p.errf("expected ',' and a window like 7d after the event name, found %s", p.tok)
	}
	p.next()
	wpos := p.tok.pos
	w, err := p.word("a window like 7d")
	if err != nil {
		return nil, err
	}
	within, err := ParseWindow(w)
	if err != nil {
		return nil, &SyntaxError{wpos, err.Error()}
	}
	c := &EventCond{Name: name, Within: within, Min: 1}
	for p.tok.kind == tComma {
		p.next()
		kpos := p.tok.pos
		k, err := p.word("a property name or min")
		if err != nil {
			return nil, err
		}
		if p.tok.kind != tEq {
			return nil, p.errf("expected '=' after %q, found %s", k, p.tok)
		}
		p.next()
		if p.tok.kind != tWord && p.tok.kind != tString {
			return nil, p.errf("expected a value after '=', found %s", p.tok)
		}
		v := p.tok.text
		if len(v) > 1024 {
			return nil, p.errf("a value must be at most 1024 bytes")
		}
		p.next()
		if k == "min" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1_000_000 {
				return nil, &SyntaxError{kpos, "min must be a number from 1 to 1000000"}
			}
			c.Min = n
			continue
		}
		if c.Props == nil {
			c.Props = map[string]string{}
		}
		if _, dup := c.Props[k]; dup || len(c.Props) >= 16 {
			return nil, &SyntaxError{kpos, "a property may be named once, and at most 16 of them"}
		}
		c.Props[k] = v
	}
	if err := p.close(); err != nil {
		return nil, err
	}
	return p.operand(&Node{Op: OpEvent, Event: c})
}

// ValidEventName reports whether s is a well-formed event name: 1-64 of
// a-z A-Z 0-9 _ - . :.
func ValidEventName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isWordByte(s[i]) {
			return false
		}
	}
	return true
}

// String renders n in the canonical syntax that Parse reads back.
func (n *Node) String() string {
	var b strings.Builder
	n.write(&b)
	return b.String()
}

func quoteWord(s string) string {
	if ValidEventName(s) {
		switch strings.ToUpper(s) {
		case "AND", "OR", "NOT", "ALL", "TAG", "ATTR", "EVENT", "MIN":
		default:
			return s
		}
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func (n *Node) write(b *strings.Builder) {
	switch n.Op {
	case OpTag:
		b.WriteString(quoteWord(n.Value))
	case OpAll:
		b.WriteString("all")
	case OpAttr:
		b.WriteString("attr(" + quoteWord(n.Key) + ")")
		if n.Cmp != "" {
			b.WriteString(" " + n.Cmp + " " + quoteWord(n.Value))
		}
	case OpEvent:
		e := n.Event
		b.WriteString("event(" + e.Name + ", " + windowString(e.Within))
		keys := make([]string, 0, len(e.Props))
		for k := range e.Props {
			keys = append(keys, k)
		}
		sortStrings(keys)
		for _, k := range keys {
			b.WriteString(", " + quoteWord(k) + "=" + quoteWord(e.Props[k]))
		}
		if e.Min > 1 {
			b.WriteString(", min=" + strconv.Itoa(e.Min))
		}
		b.WriteString(")")
	case OpNot:
		b.WriteString("NOT ")
		k := n.Kids[0]
		if k.Op == OpAnd || k.Op == OpOr {
			b.WriteString("(")
			k.write(b)
			b.WriteString(")")
		} else {
			k.write(b)
		}
	case OpAnd, OpOr:
		sep := " AND "
		if n.Op == OpOr {
			sep = " OR "
		}
		for i, k := range n.Kids {
			if i > 0 {
				b.WriteString(sep)
			}
			if k.Op == OpAnd || k.Op == OpOr {
				b.WriteString("(")
				k.write(b)
				b.WriteString(")")
			} else {
				k.write(b)
			}
		}
	}
}

func windowString(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d%time.Hour == 0:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return strconv.Itoa(int(d/time.Minute)) + "m"
}
