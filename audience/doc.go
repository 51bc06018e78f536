// Package audience answers "which users of an app should get this?": it
// parses and evaluates tag expressions and segment rules over the user tag
// index, user attributes and behaviour events, records behaviour events,
// and keeps saved segments. Storage is behind the storage.UserIndex,
// storage.EventStore and storage.SegmentStore interfaces; package campaign
// (targeted push) is its main caller.
//
// # Tag expressions
//
// A tag expression combines tags with AND, OR, NOT and parentheses (the
// keywords in any case; NOT binds tighter than AND, AND tighter than OR):
//
//	vip AND NOT churned
//	(beta OR staff) AND "region:eu west"
//
// A tag is a word of letters, digits and _ - . : or a double-quoted string
// (with \" and \\ escapes) for any other tag text.
//
// # Segment rules
//
// A segment rule is a tag expression whose operands may also be
//
//	tag(vip)                                a tag (same as the bare word)
//	attr(country) = "DE"                    an attribute equal to a value
//	attr(country) != "DE"                   not equal (or absent)
//	attr(plan)                              the attribute is set
//	event(viewed_product, 7d)               the user caused the event within 7 days
//	event(viewed_product, 7d, product="X")  ... with these properties
//	event(purchase, 30d, min=3)             ... at least 3 times
//	all                                     every user
//
// Durations are a number followed by m, h or d. "No login for 30 days" is
// NOT event(login, 30d). Evaluation works on sorted sets of user IDs; a
// negation is applied as a set difference where it can be (a AND NOT b),
// and against the set of all users only where it must.
package audience
