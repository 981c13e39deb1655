package paymentsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
)

// ledgerFile is the append-only copy of the ledger: one Payment as JSON per line. A line
// counts once its newline is on disk; a write cut short by a crash leaves a torn last
// line, which openLedger drops.
type ledgerFile struct {
	f    *os.File
	size int64 // end of the last whole line: where a failed append is cut back to
}

// openLedger opens or creates the file at path and returns its payments in order. A bad
// last line is a torn write: it is logged, dropped and truncated away, so the next append
// starts on a fresh line. A bad line before it means the file was edited or is not a
// ledger, and is an error: guessing would risk charging a key twice.
func openLedger(path string, logger *slog.Logger) (*ledgerFile, []Payment, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open ledger: %w", err)
	}
	payments, size, err := readLedger(f, path, logger)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return &ledgerFile{f: f, size: size}, payments, nil
}

func readLedger(f *os.File, path string, logger *slog.Logger) ([]Payment, int64, error) {
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, fmt.Errorf("read ledger %s: %w", path, err)
	}
	var payments []Payment
	off := 0
	for line := 1; off < len(data); line++ {
		end := len(data)
		if nl := bytes.IndexByte(data[off:], '\n'); nl >= 0 {
			end = off + nl + 1
		}
		text := bytes.TrimSpace(data[off:end])
		if len(text) == 0 {
			off = end
			continue
		}
		p, err := decodeEntry(text)
		switch {
		case err != nil && len(bytes.TrimSpace(data[end:])) > 0:
			return nil, 0, fmt.Errorf("ledger %s line %d: %w", path, line, err)
		case err != nil:
			logger.Warn("dropping torn last line of the ledger", "path", path, "line", line, "bytes", end-off, "err", err)
			if err := f.Truncate(int64(off)); err != nil {
				return nil, 0, fmt.Errorf("truncate ledger %s: %w", path, err)
			}
			return payments, int64(off), nil
		case data[end-1] != '\n':
			// The entry is whole but its newline was not written: finish the line so the next
			// append does not run into it.
			if _, err := f.Write([]byte{'\n'}); err != nil {
				return nil, 0, fmt.Errorf("complete last line of ledger %s: %w", path, err)
			}
			end++
		}
		payments = append(payments, p)
		off = end
	}
	return payments, int64(off), nil
}

func decodeEntry(text []byte) (Payment, error) {
	var p Payment
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Payment{}, err
	}
	if dec.More() {
		return Payment{}, errors.New("more than one entry on the line")
	}
	if p.ID == "" || p.IdempotencyKey == "" || p.OrderID <= 0 || (p.Status != StatusApproved && p.Status != StatusDeclined) {
		return Payment{}, fmt.Errorf("incomplete entry %s", text)
	}
	return p, nil
}

// append writes p as one line. On error it cuts the file back to its last whole line, so
// a half-written entry cannot end up in the middle of the file.
func (l *ledgerFile) append(p Payment) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	n, err := l.f.Write(append(b, '\n'))
	if err != nil {
		if terr := l.f.Truncate(l.size); terr != nil {
			err = errors.Join(err, terr)
		}
		return err
	}
	l.size += int64(n)
	return nil
}

func (l *ledgerFile) close() error { return l.f.Close() }
