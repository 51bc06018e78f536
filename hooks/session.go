package hooks

import (
	"encoding/base64"
	"errors"
	"log/slog"
	"strconv"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// KV is the key-value store the session hook keeps its records in.
type KV interface {
	Put(key string, val []byte) error
	Delete(key string) error
	DeletePrefix(prefix string) error
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// Sessions persists the MQTT state that an operator expects to survive a
// restart: retained messages, and the persistent sessions (MQTT 5 with a
// session expiry, MQTT 3 with clean session off) with their subscriptions
// and their QoS 1/2 deliveries not yet acknowledged (inflight). Clean
// sessions are never written, so ordinary connections cost no I/O.
//
// Inflight. Each QoS 1/2 message the broker sends (or queues) to a
// persistent session is written when it is sent and deleted when the
// client acknowledges it (or the broker drops it), so a persistent session
// restored after a restart gets its unacknowledged messages again, flagged
// DUP, when it reconnects. That is one write and one delete per QoS 1/2
// delivery to a persistent session, nothing for clean sessions or QoS 0
// (chat deliveries are QoS 0: chat messages are in the durable message log
// and synced from there). The writes are as durable as the store's other
// session writes: they survive a crash of the process.
type Sessions struct {
	mqtt.HookBase
	kv    KV
	log   *slog.Logger
	known sync.Map // client IDs with a stored record, so clean connects cost no I/O
}

// NewSessions returns a hook storing into kv.
func NewSessions(kv KV, log *slog.Logger) *Sessions { return &Sessions{kv: kv, log: log} }

// ID implements mqtt.Hook.
func (h *Sessions) ID() string { return "warbler-sessions" }

// Provides implements mqtt.Hook.
func (h *Sessions) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnWillSent,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnRetainMessage, mqtt.OnRetainedExpired,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.StoredClients, mqtt.StoredSubscriptions, mqtt.StoredRetainedMessages, mqtt.StoredInflightMessages:
		return true
	}
	return false
}

const (
	keyClient   = "c/"
	keySub      = "s/"
	keyRetained = "r/"
	keyInflight = "i/"
)

func inflightKey(cl *mqtt.Client, id uint16) string {
	return keyInflight + enc(cl.ID) + "/" + strconv.Itoa(int(id))
}

// enc makes a client ID safe as a key segment (client IDs may hold '/').
func enc(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func (h *Sessions) warn(what string, err error) {
	if err != nil {
		h.log.Error("session store write failed", "op", what, "error", err)
	}
}

func (h *Sessions) putClient(cl *mqtt.Client) {
	props := cl.Properties.Props.Copy(false)
	rec := storage.Client{
		ID: cl.ID, T: storage.ClientKey, Remote: cl.Net.Remote, Listener: cl.Net.Listener,
		Username: cl.Properties.Username, Clean: cl.Properties.Clean, ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval: props.SessionExpiryInterval,
			AuthenticationMethod:  props.AuthenticationMethod,
			RequestProblemInfo:    props.RequestProblemInfo,
			RequestResponseInfo:   props.RequestResponseInfo,
			ReceiveMaximum:        props.ReceiveMaximum,
			TopicAliasMaximum:     props.TopicAliasMaximum,
			User:                  props.User,
			MaximumPacketSize:     props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
	b, err := rec.MarshalBinary()
	if err == nil {
		err = h.kv.Put(keyClient+enc(cl.ID), b)
	}
	h.warn("client", err)
	h.known.Store(cl.ID, true)
}

func (h *Sessions) dropClient(id string) {
	if _, ok := h.known.LoadAndDelete(id); !ok {
		return
	}
	h.warn("delete client", h.kv.Delete(keyClient+enc(id)))
	h.warn("delete subscriptions", h.kv.DeletePrefix(keySub+enc(id)+"/"))
	h.warn("delete inflight", h.kv.DeletePrefix(keyInflight+enc(id)+"/"))
}

// OnSessionEstablished records a persistent session; a clean session that
// replaces a persistent one of the same client ID removes its record.
func (h *Sessions) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if persistent(cl) {
		h.putClient(cl)
		return
	}
	if !cl.Net.Inline {
		h.dropClient(cl.ID)
	}
}

// OnWillSent updates the record once the will is gone.
func (h *Sessions) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if persistent(cl) {
		h.putClient(cl)
	}
}

// OnDisconnect forgets a session that ends with the connection.
func (h *Sessions) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire || cl.Net.Inline || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return
	}
	// A session that ends with the connection may have been persistent
	// until its DISCONNECT set its expiry to 0; dropClient costs nothing
	// for a client that was never stored.
	h.dropClient(cl.ID)
}

// OnClientExpired forgets a session whose expiry has passed.
func (h *Sessions) OnClientExpired(cl *mqtt.Client) { h.dropClient(cl.ID) }

// OnSubscribed records the granted subscriptions of a persistent session.
func (h *Sessions) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if !persistent(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= 0x80 {
			continue
		}
		rec := storage.Subscription{
			ID: enc(cl.ID) + "/" + f.Filter, T: storage.SubscriptionKey, Client: cl.ID, Qos: codes[i],
			Filter: f.Filter, Identifier: f.Identifier, NoLocal: f.NoLocal,
			RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		}
		b, err := rec.MarshalBinary()
		if err == nil {
			err = h.kv.Put(keySub+rec.ID, b)
		}
		h.warn("subscription", err)
	}
}

// OnUnsubscribed removes subscriptions.
func (h *Sessions) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if !persistent(cl) {
		return
	}
	for _, f := range pk.Filters {
		h.warn("unsubscribe", h.kv.Delete(keySub+enc(cl.ID)+"/"+f.Filter))
	}
}

// OnRetainMessage stores (r=1) or clears (r=-1) a retained message.
func (h *Sessions) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	key := keyRetained + pk.TopicName
	if r == -1 {
		h.warn("clear retained", h.kv.Delete(key))
		return
	}
	if r != 1 {
		return
	}
	props := pk.Properties.Copy(false)
	rec := storage.Message{
		ID: key, T: storage.RetainedKey, FixedHeader: pk.FixedHeader, TopicName: pk.TopicName,
		Payload: pk.Payload, Created: pk.Created, Client: cl.ID, Origin: pk.Origin,
		Properties: storage.MessageProperties{
			PayloadFormat: props.PayloadFormat, MessageExpiryInterval: props.MessageExpiryInterval,
			ContentType: props.ContentType, ResponseTopic: props.ResponseTopic,
			CorrelationData: props.CorrelationData, User: props.User,
		},
	}
	b, err := rec.MarshalBinary()
	if err == nil {
		err = h.kv.Put(key, b)
	}
	h.warn("retained", err)
}

// OnRetainedExpired removes an expired retained message.
func (h *Sessions) OnRetainedExpired(topic string) {
	h.warn("expire retained", h.kv.Delete(keyRetained+topic))
}

// OnQosPublish records a QoS 1/2 message sent (or queued) to a persistent
// session until it is acknowledged.
func (h *Sessions) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	if !persistent(cl) {
		return
	}
	props := pk.Properties.Copy(false)
	rec := storage.Message{
		ID: inflightKey(cl, pk.PacketID), T: storage.InflightKey, Client: cl.ID, Origin: pk.Origin,
		PacketID: pk.PacketID, FixedHeader: pk.FixedHeader, TopicName: pk.TopicName, Payload: pk.Payload,
		Sent: sent, Created: pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat: props.PayloadFormat, MessageExpiryInterval: props.MessageExpiryInterval,
			ContentType: props.ContentType, ResponseTopic: props.ResponseTopic,
			CorrelationData: props.CorrelationData, SubscriptionIdentifier: props.SubscriptionIdentifier,
			User: props.User,
		},
	}
	b, err := rec.MarshalBinary()
	if err == nil {
		err = h.kv.Put(rec.ID, b)
	}
	h.warn("inflight", err)
}

// OnQosComplete forgets an acknowledged message.
func (h *Sessions) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) {
		h.warn("inflight done", h.kv.Delete(inflightKey(cl, pk.PacketID)))
	}
}

// OnQosDropped forgets a message the broker gave up on.
func (h *Sessions) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { h.OnQosComplete(cl, pk) }

// StoredInflightMessages implements mqtt.Hook.
func (h *Sessions) StoredInflightMessages() (v []storage.Message, err error) {
	err = h.kv.Scan(keyInflight, func(_ string, b []byte) error {
		var m storage.Message
		if err := m.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, m)
		return nil
	})
	return v, err
}

// StoredClients implements mqtt.Hook.
func (h *Sessions) StoredClients() (v []storage.Client, err error) {
	err = h.kv.Scan(keyClient, func(_ string, b []byte) error {
		var c storage.Client
		if err := c.UnmarshalBinary(b); err != nil {
			return err
		}
		h.known.Store(c.ID, true)
		v = append(v, c)
		return nil
	})
	return v, err
}

// StoredSubscriptions implements mqtt.Hook.
func (h *Sessions) StoredSubscriptions() (v []storage.Subscription, err error) {
	err = h.kv.Scan(keySub, func(_ string, b []byte) error {
		var s storage.Subscription
		if err := s.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, s)
		return nil
	})
	return v, err
}

// StoredRetainedMessages implements mqtt.Hook.
func (h *Sessions) StoredRetainedMessages() (v []storage.Message, err error) {
	err = h.kv.Scan(keyRetained, func(k string, b []byte) error {
		var m storage.Message
		if err := m.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, m)
		return nil
	})
	return v, err
}
