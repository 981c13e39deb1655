package events

// NewMessageWithID lets the external tests build messages with a fixed id, to pin the
// serialized form in golden files.
var NewMessageWithID = newMessage
