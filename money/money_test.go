package money

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, currency string
		want               int64
		err                error
	}{
		{"integer", "200", "USD", 20000, nil},
		{"cents", "19.99", "USD", 1999, nil},
		{"one decimal", "19.5", "USD", 1950, nil},
		{"trailing zeros allowed", "19.990", "USD", 1999, nil},
		{"yen has no minor unit", "500", "JPY", 500, nil},
		{"dinar has three", "1.234", "BHD", 1234, nil},
		{"smallest", "0.01", "USD", 1, nil},
		{"max int64 minor", "92233720368547758.07", "USD", 9223372036854775807, nil},
		{"overflow", "92233720368547758.08", "USD", 0, ErrOverflow},
		{"zero", "0", "USD", 0, ErrNotPositive},
		{"zero decimal", "0.00", "USD", 0, ErrNotPositive},
		{"negative", "-1", "USD", 0, ErrNotPositive},
		{"too precise", "19.999", "USD", 0, ErrTooPrecise},
		{"yen with decimals", "500.5", "JPY", 0, ErrTooPrecise},
		{"unknown currency", "1", "XXX", 0, ErrUnknownCurrency},
		{"lowercase currency", "1", "usd", 0, ErrUnknownCurrency},
		{"exponent", "1e3", "USD", 0, ErrSyntax},
		{"leading zero", "01", "USD", 0, ErrSyntax},
		{"dot only", ".5", "USD", 0, ErrSyntax},
		{"trailing dot", "5.", "USD", 0, ErrSyntax},
		{"plus sign", "+5", "USD", 0, ErrSyntax},
		{"empty", "", "USD", 0, ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in, tt.currency)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse(%q, %q) error = %v, want %v", tt.in, tt.currency, err, tt.err)
			}
			if got.Minor != tt.want {
				t.Errorf("Parse(%q, %q) = %d, want %d", tt.in, tt.currency, got.Minor, tt.want)
			}
		})
	}
}

func TestDecimal(t *testing.T) {
	tests := []struct {
		a    Amount
		want string
	}{
		{Amount{20000, "USD"}, "200"},
		{Amount{1999, "USD"}, "19.99"},
		{Amount{1950, "USD"}, "19.5"},
		{Amount{1, "USD"}, "0.01"},
		{Amount{500, "JPY"}, "500"},
		{Amount{1234, "BHD"}, "1.234"},
		{Amount{5, "BHD"}, "0.005"},
	}
	for _, tt := range tests {
		if got := tt.a.Decimal(); got != tt.want {
			t.Errorf("%#v.Decimal() = %q, want %q", tt.a, got, tt.want)
		}
		back, err := Parse(tt.a.Decimal(), tt.a.Currency)
		if err != nil || back != tt.a {
			t.Errorf("Parse(Decimal(%v)) = %v, %v; want round trip", tt.a, back, err)
		}
	}
}
