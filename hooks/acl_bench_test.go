package hooks

import (
	"fmt"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/warblerim/warbler/identity"
	"github.com/warblerim/warbler/storage"
)

// BenchmarkACLCheck measures OnACLCheck as mochi calls it on every
// delivery (write=false, a concrete topic), with 10,000 registered
// principals, for the common cases: a user's downlink, a broadcast
// channel, an IoT topic under a %u rule, and a refusal.
func BenchmarkACLCheck(b *testing.B) {
	reg := NewPrincipals()
	acl, _ := NewACL(ACLOptions{Principals: reg})
	rules, _ := identity.CompileRules("a1", []storage.TopicRule{
		{Pattern: "w/{app}/iot/shared/+", Access: "read"},
		{Pattern: "w/{app}/iot/%u/#", Access: "readwrite"},
	})
	var clients []*mqtt.Client
	for i := range 10000 {
		cl := &mqtt.Client{ID: fmt.Sprintf("a1:u%d:d1", i)}
		p := newPrincipal(KindUser, cl, "a1", fmt.Sprintf("u%d", i), "d1")
		p.rules = rules
		reg.set(p)
		clients = append(clients, cl)
	}
	cl := clients[4242]
	for _, c := range []struct{ name, topic string }{
		{"downlink", "w/a1/u/u4242"},
		{"broadcast", "w/a1/b/lobby"},
		{"iot", "w/a1/iot/u4242/kitchen/temp"},
		{"denied", "w/a1/u/u17"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				acl.OnACLCheck(cl, c.topic, false)
			}
		})
	}
	b.Run("downlink-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				acl.OnACLCheck(cl, "w/a1/u/u4242", false)
			}
		})
	})
}
