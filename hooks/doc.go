// Package hooks holds the broker hooks that turn plain MQTT into Warbler.
// Each hook is a mochi-mqtt Hook (it embeds mqtt.HookBase) with one concern:
//
//   - Auth: who may connect. CONNECT carries a token or API key; the client
//     ID is bound to the app, user and device it names.
//   - ACL: which topics a principal may read and write, checked in memory on
//     every subscribe, publish and delivery.
//   - Chat: the publish hook that parses uplink envelopes, stores messages
//     durably before they are acknowledged, and fans them out.
//   - Broadcast: services' publishes on broadcast topics; on a chat
//     channel's topic they become stored channel messages (delivered and
//     pushed), elsewhere they pass through as plain broadcasts.
//   - Sessions: persistence of retained messages and persistent sessions.
//
// The broker calls hooks in the order they are added; authentication and ACL
// answers are OR-combined across hooks, so the broker installs exactly one
// hook that answers each.
package hooks
