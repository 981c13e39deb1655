package kafkaconf

import (
	"testing"

	"github.com/IBM/sarama"
)

// TestRecordKeyMarshalerKeepsTheKey: what RecordKeyMarshaler reads it writes back with the
// same key (none stays none, empty stays empty), whatever ce_subject says, and the key
// travels as the key only, never as a header.
func TestRecordKeyMarshalerKeepsTheKey(t *testing.T) {
	for _, tt := range []struct {
		name string
		key  []byte
	}{
		{"foreign key", []byte("k-foreign")},
		{"no key", nil},
		{"empty key", []byte{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := &sarama.ConsumerMessage{Key: tt.key, Value: []byte("v"), Headers: []*sarama.RecordHeader{
				{Key: []byte("ce_subject"), Value: []byte("7")},
				{Key: []byte(MetaRecordKey), Value: []byte("stale")}, // a header of that name is not the key
			}}
			msg, err := RecordKeyMarshaler.Unmarshal(in)
			if err != nil {
				t.Fatal(err)
			}
			out, err := RecordKeyMarshaler.Marshal("t", msg)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			if out.Key != nil {
				if got, err = out.Key.Encode(); err != nil {
					t.Fatal(err)
				}
			}
			if (got == nil) != (tt.key == nil) || string(got) != string(tt.key) {
				t.Errorf("key = %q (nil %v), want %q (nil %v)", got, got == nil, tt.key, tt.key == nil)
			}
			for _, h := range out.Headers {
				if string(h.Key) == MetaRecordKey {
					t.Errorf("header %s=%q written; the key belongs in the key", h.Key, h.Value)
				}
			}
		})
	}
}
