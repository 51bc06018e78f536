package bridge

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// Option adjusts one MessageStored call.
type Option func(*trigger)

type trigger struct {
	mentions   map[string]bool
	mentionAll bool
	senderName string
	convTitle  string
	kind       string
	priority   int
	ttl        time.Duration
	data       map[string]string
	immediate  bool
}

// Immediate sends the notification without waiting out the coalescing
// window, and never merges it with another notification of the
// conversation (nor another into it): an incoming call, which a text sent
// right after it must not replace.
func Immediate() Option { return func(t *trigger) { t.immediate = true } }

// Mentions names the users the message mentions: they are notified even
// if they muted the conversation.
func Mentions(users ...string) Option {
	return func(t *trigger) {
		if t.mentions == nil {
			t.mentions = map[string]bool{}
		}
		for _, u := range users {
			t.mentions[u] = true
		}
	}
}

// MentionAll overrides every recipient's mute (an @all or @channel).
func MentionAll() Option { return func(t *trigger) { t.mentionAll = true } }

// SenderName is the author's display name for previews (default: the user
// ID).
func SenderName(name string) Option { return func(t *trigger) { t.senderName = name } }

// ConvTitle is the conversation's name for previews of group messages.
func ConvTitle(title string) Option { return func(t *trigger) { t.convTitle = title } }

// Silent sends a background push that only asks the app to sync.
func Silent() Option { return func(t *trigger) { t.kind = KindSilent } }

// Private sends a content-free push for an end-to-end encrypted
// conversation: no sender and no text, only conv and seq.
func Private() Option { return func(t *trigger) { t.kind = KindPrivate } }

// Priority sets the priority: 10 (immediate) or 5 (power-friendly).
func Priority(p int) Option { return func(t *trigger) { t.priority = p } }

// TTL sets how long the notification stays worth delivering.
func TTL(d time.Duration) Option { return func(t *trigger) { t.ttl = d } }

// Data adds entries to the data payload (conv, seq, msg_id and nid are
// always set and cannot be replaced).
func Data(kv map[string]string) Option {
	return func(t *trigger) {
		if t.data == nil {
			t.data = map[string]string{}
		}
		for k, v := range kv {
			t.data[k] = v
		}
	}
}

// newID returns a UUID version 7: 48 bits of unix milliseconds, then random
// bits. It is the canonical lower-case form APNs wants in apns-id, and IDs
// sort by creation time.
func newID(now time.Time) string {
	var u [16]byte
	_, _ = rand.Read(u[6:])
	ms := uint64(now.UnixMilli())
	var t [8]byte
	binary.BigEndian.PutUint64(t[:], ms)
	copy(u[:6], t[2:])
	u[6] = 0x70 | u[6]&0x0F
	u[8] = 0x80 | u[8]&0x3F
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:], u[10:])
	return string(s[:])
}

// previewText extracts the text of a message body: a JSON string, or the
// "text" field of an object. ok is false if there is none.
func previewText(body json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(body, &s) == nil && s != "" {
		return truncate(s, 200), true
	}
	var o struct {
		Text string `json:"text"`
	}
	if json.Unmarshal(body, &o) == nil && o.Text != "" {
		return truncate(o.Text, 200), true
	}
	return "", false
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// stricter returns the more private of two preview modes.
func stricter(a, b string) string {
	rank := map[string]int{PreviewFull: 0, PreviewSender: 1, PreviewHidden: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// parseQuiet checks quiet hours and returns start and end minutes of the
// day and the location.
func parseQuiet(q storage.QuietHours) (int, int, *time.Location, error) {
	hm := func(s string) (int, error) {
		h, m, ok := strings.Cut(s, ":")
		hh, err1 := strconv.Atoi(h)
		mm, err2 := strconv.Atoi(m)
		if !ok || err1 != nil || err2 != nil || hh < 0 || hh > 23 || mm < 0 || mm > 59 {
			return 0, invalidf("quiet hours must be HH:MM")
		}
		return hh*60 + mm, nil
	}
	start, err := hm(q.Start)
	if err != nil {
		return 0, 0, nil, err
	}
	end, err := hm(q.End)
	if err != nil {
		return 0, 0, nil, err
	}
	loc := time.UTC
	if q.TimeZone != "" {
		if loc, err = time.LoadLocation(q.TimeZone); err != nil {
			return 0, 0, nil, invalidf("unknown time zone %q", q.TimeZone)
		}
	}
	return start, end, loc, nil
}

// quiet reports whether p silences notifications at now.
func quiet(p storage.PushPrefs, now time.Time) bool {
	if now.Before(p.DNDUntil) {
		return true
	}
	if p.Quiet == nil {
		return false
	}
	start, end, loc, err := parseQuiet(*p.Quiet)
	if err != nil || start == end {
		return false
	}
	t := now.In(loc)
	m := t.Hour()*60 + t.Minute()
	if start < end {
		return m >= start && m < end
	}
	return m >= start || m < end // spans midnight
}

func muted(p storage.PushPrefs, conv string, now time.Time) bool {
	until, ok := p.Muted[conv]
	return ok && (until.IsZero() || now.Before(until))
}

// merge folds a queued notification into the newer one that replaces it:
// the newer one keeps the older one's due time (so that a steady stream of
// messages cannot postpone the notification forever) and counts its
// messages.
func (b *Bridge) merge(old storage.PushRecord, nu *storage.PushRecord) {
	if old.Due.Before(nu.Due) {
		nu.Due = old.Due
	}
	if nu.Data["campaign"] != "" { // a campaign resent after a crash: the same notification
		return
	}
	nu.Count = max(old.Count, 1) + max(nu.Count, 1)
	if nu.Data == nil {
		nu.Data = map[string]string{}
	}
	nu.Data["count"] = strconv.Itoa(nu.Count)
	if nu.Kind == KindAlert && nu.Data["preview"] != PreviewFull {
		nu.Body = b.o.Text(nu.Locale, nu.Count)
	}
}

// MessageStored is called by the chat service after msg is durably stored
// in a conversation, with the users it is for (the author may be among
// them: the author is never notified). It enqueues one notification per
// device that should get one (see the package documentation) and returns
// how many it enqueued. When it returns nil, they are durable. An error
// from the Directory for one user does not stop the others; the errors are
// returned joined, after the rest is enqueued.
func (b *Bridge) MessageStored(ctx context.Context, app string, msg protocol.Message, recipients []string, opts ...Option) (int, error) {
	var t trigger
	for _, o := range opts {
		o(&t)
	}
	if t.kind == "" {
		t.kind = KindAlert
	}
	// An app without credentials for either provider gets no pushes: skip
	// the per-recipient lookups below (the answer is cached per app).
	if !b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: storage.ProviderAPNs}) &&
		!b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: storage.ProviderFCM}) {
		return 0, nil
	}
	s, err := b.Settings(ctx, app)
	if err != nil {
		return 0, err
	}
	now := b.o.Now()
	sender := t.senderName
	if sender == "" {
		sender = msg.From.User
	}
	text, hasText := previewText(msg.Body)
	var recs []storage.PushRecord
	var errs []error
	for _, user := range recipients {
		if user == msg.From.User {
			continue
		}
		prefs, err := b.store.GetPushPrefs(ctx, app, user)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			errs = append(errs, fmt.Errorf("prefs of %s: %w", user, err))
			continue
		}
		if prefs.Disabled {
			continue
		}
		if muted(prefs, msg.Conv, now) && !t.mentionAll && !t.mentions[user] {
			continue
		}
		isQuiet := quiet(prefs, now)
		devs, err := b.o.Directory.Devices(ctx, app, user)
		if err != nil {
			errs = append(errs, fmt.Errorf("devices of %s: %w", user, err))
			continue
		}
		for _, d := range devs {
			provider := d.ProviderOf()
			if d.Token == "" || provider == "" || d.Settings.Disabled {
				continue
			}
			if !b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: provider}) {
				continue
			}
			online := b.o.Presence != nil && b.o.Presence.Online(app, user, d.ID)
			if online && s.GraceMillis <= 0 {
				continue
			}
			r := b.newRecord(app, user, d, provider, t, s, now)
			r.Conv, r.Seq, r.MsgID = msg.Conv, msg.Seq, msg.ID
			r.Data["conv"], r.Data["seq"], r.Data["msg_id"] = msg.Conv, strconv.FormatUint(msg.Seq, 10), msg.ID
			r.Quiet = r.Quiet || isQuiet
			if r.Kind == KindAlert {
				mode := stricter(s.Preview, d.Settings.Preview)
				r.Data["preview"] = mode
				switch {
				case mode == PreviewFull && hasText:
					r.Title, r.Body = sender, text
					if t.convTitle != "" {
						r.Title, r.Body = t.convTitle, sender+": "+text
					}
				case mode == PreviewFull, mode == PreviewSender:
					r.Title, r.Body = sender, b.o.Text(d.Locale, 1)
					if t.convTitle != "" {
						r.Title = t.convTitle
					}
				default:
					r.Body = b.o.Text(d.Locale, 1)
				}
			}
			r.Coalesce = r.Kind + "/" + user + "/" + d.ID + "/" + msg.Conv
			r.Due = now.Add(time.Duration(s.CoalesceMillis) * time.Millisecond)
			if t.immediate {
				r.Coalesce += "/" + msg.ID
				r.Due = now
			}
			if online {
				r.Due, r.CheckDelivered = now.Add(time.Duration(s.GraceMillis)*time.Millisecond), true
			}
			recs = append(recs, r)
		}
	}
	if err := b.enqueue(ctx, recs); err != nil {
		return 0, err
	}
	return len(recs), errors.Join(errs...)
}

func (b *Bridge) newRecord(app, user string, d Device, provider string, t trigger, s storage.PushSettings, now time.Time) storage.PushRecord {
	id := newID(now)
	ttl := time.Duration(s.TTLSeconds) * time.Second
	if t.ttl > 0 {
		ttl = t.ttl
	}
	sound := s.Sound
	if d.Settings.Sound != "" {
		sound = d.Settings.Sound
	}
	r := storage.PushRecord{
		ID: id, App: app, User: user, Device: d.ID, Provider: provider, Token: d.Token, TokenAt: d.TokenAt,
		Topic: d.Topic, Locale: d.Locale, Count: 1, Kind: t.kind, Sound: sound, Priority: t.priority,
		Expires: now.Add(ttl), Data: map[string]string{}, State: storage.PushQueued, Due: now,
		CreatedAt: now, UpdatedAt: now,
	}
	for k, v := range t.data {
		r.Data[k] = v
	}
	r.Data["nid"] = id
	if t.kind == KindPrivate {
		r.Body = b.o.Text(d.Locale, 1)
	}
	return r
}

func (b *Bridge) enqueue(ctx context.Context, recs []storage.PushRecord) error {
	if len(recs) == 0 {
		return nil
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := b.store.EnqueuePush(ctx, recs, b.merge); err != nil {
		return err
	}
	seen := map[storage.PushQueueID]bool{}
	for _, r := range recs {
		b.m.queued(r.Provider)
		id := storage.PushQueueID{App: r.App, Provider: r.Provider}
		if !seen[id] {
			seen[id] = true
			if q := b.queue(id); q != nil {
				q.poke()
			}
		}
	}
	return nil
}

// Notify sends a notification with a given title and body to every device
// of user that can receive one, now, whatever the user's mutes or the
// devices' presence: an operator's test push. It returns the records'
// IDs, to follow in the ledger; ErrNoCredentials if no device could be
// reached because the app lacks credentials.
func (b *Bridge) Notify(ctx context.Context, app, user, title, body string) ([]string, error) {
	s, err := b.Settings(ctx, app)
	if err != nil {
		return nil, err
	}
	devs, err := b.o.Directory.Devices(ctx, app, user)
	if err != nil {
		return nil, err
	}
	now := b.o.Now()
	var recs []storage.PushRecord
	var ids []string
	lacking := false
	for _, d := range devs {
		provider := d.ProviderOf()
		if d.Token == "" || provider == "" {
			continue
		}
		if !b.hasCreds(ctx, storage.PushQueueID{App: app, Provider: provider}) {
			lacking = true
			continue
		}
		r := b.newRecord(app, user, d, provider, trigger{kind: KindAlert}, s, now)
		r.Title, r.Body = title, body
		r.Data["test"] = "1"
		recs = append(recs, r)
		ids = append(ids, r.ID)
	}
	if len(recs) == 0 && lacking {
		return nil, ErrNoCredentials
	}
	return ids, b.enqueue(ctx, recs)
}
