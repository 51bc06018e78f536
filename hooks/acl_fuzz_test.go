package hooks

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/protocol"
	"github.com/warblerim/warbler/storage"
)

// FuzzACLCheck checks that the read ACL is closed under matching: if a
// user may subscribe to a filter, every concrete topic the filter matches
// is one the user may receive; and every topic the user may receive is one
// of theirs (own downlink, own device topic, a channel of their app, or
// their IoT area).
func FuzzACLCheck(f *testing.F) {
	rules, err := identity.CompileRules("a1", []storage.TopicRule{
		{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"},
		{Pattern: "w/{app}/iot/+/pub", Access: "read"},
	})
	if err != nil {
		f.Fatal(err)
	}
	p := newPrincipal(KindUser, &mqtt.Client{ID: "a1:alice:d1"}, "a1", "alice", "d1")
	p.rules = rules
	for _, s := range [][2]string{
		{"w/a1/u/alice", "w/a1/u/alice"}, {"w/a1/u/+", "w/a1/u/bob"}, {"$share/g/w/a1/#", "w/a1/d/bob/d1"},
		{"w/a1/iot/alice/#", "w/a1/iot/alice/x"}, {"w/a1/iot/+/pub", "w/a1/iot/bob/pub"}, {"#", "w/a2/u/alice"},
		{"w/a1/b/news", "w/a1/b/news"}, {"+/a1/u/alice", "w/a1/u/alice"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, flt, topic string) {
		exact := protocol.ValidFilter(topic, 0) && protocol.FilterIsExact(topic)
		if exact && topic[0] != '$' && check(p, topic, false, nil) == allowOK {
			if pt := protocol.ParseTopic(topic); !alicesTopic(pt, topic, rules) {
				t.Fatalf("alice may receive %q (%+v)", topic, pt)
			}
		}
		if check(p, flt, false, nil) != allowOK {
			return
		}
		_, inner, _, _ := protocol.SplitShared(flt)
		if !protocol.ValidFilter(inner, 0) || !exact || topic[0] == '$' {
			return
		}
		if protocol.MatchFilter(inner, topic) && check(p, topic, false, nil) != allowOK {
			t.Fatalf("allowed filter %q reaches refused topic %q", flt, topic)
		}
	})
}

// alicesTopic reports whether alice (app a1, device d1) should receive
// topic: her downlink, her device topic, a channel of a1, or her IoT area.
func alicesTopic(pt protocol.Topic, topic string, rules *identity.Rules) bool {
	if pt.App != "a1" {
		return false
	}
	switch pt.Kind {
	case protocol.KindDownlink:
		return pt.User == "alice"
	case protocol.KindDevice:
		return pt.User == "alice" && pt.Device == "d1"
	case protocol.KindBroadcast:
		return true
	case protocol.KindIoT:
		return rules.Allow(topic, "alice", "a1:alice:d1", false)
	}
	return false
}
