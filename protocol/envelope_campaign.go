package protocol

// KindPush is the kind of the in-app payload of a targeted push, published
// on the user's downlink topic to connected devices (see package campaign).
const KindPush = "push"

// OpOpened reports that the user opened a targeted push (a campaign): its
// notification or its in-app message. "id" is the campaign's ID, as the
// in-app payload's "campaign" field and the notification's data carry it.
// The reply is {"first": true|false}: whether this was the user's first
// report of it (only the first is counted).
const OpOpened = "opened"

// validateCampaign checks the ops of this file; ok is false for any other
// op.
func (r *Request) validateCampaign() (err error, ok bool) {
	if r.Op != OpOpened {
		return nil, false
	}
	if err := CheckID("id", r.ID); err != nil {
		return idErr(err), true
	}
	return nil, true
}
