// Package search is Warbler's server-side message search: it analyses the
// text of chat messages (words for space-separated scripts, character
// bigrams for Chinese, Japanese and Korean), keeps an inverted index per
// conversation in a storage.SearchIndex, and answers a user's queries over
// the conversations they can read, ranked by BM25 relevance and recency.
//
// # Indexing
//
// The index is derived from the chat log. The chat service hands every
// durable log entry to Stored (in seq order per conversation, never
// blocking the sender); one background goroutine applies them: a message
// is indexed, an edit event re-indexes the message it edits, a recall
// event removes it, and the "deleted" system event of a conversation
// drops the conversation's index and cursor. The index keeps, per conversation, a cursor: the last
// seq it has read, moved in the same write as the postings. On start, and
// whenever a hand-off was dropped or failed, the indexer reads the log
// from the cursor, so every acknowledged message is indexed eventually,
// also after a crash.
//
// # Access
//
// Who may read what is decided at query time by the Access interface (the
// chat service): the conversations the user is a member of now, each from
// the first seq they may read. The index itself knows nothing of users.
//
// Only the "text" of a message is indexed (see Text): bodies are opaque to
// the server otherwise, and end-to-end encrypted ones carry no text.
package search
