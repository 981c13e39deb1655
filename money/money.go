// Package money parses and formats amounts exactly. An amount is a count of the
// currency's minor units (cents for USD, yen for JPY, fils for BHD); decimals in major
// units are parsed digit by digit, never through float64.
package money

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Amount is an exact amount of money.
type Amount struct {
	Minor    int64  // in the currency's minor units
	Currency string // ISO 4217 alphabetic code
}

var (
	// ErrUnknownCurrency: the code is not on the allowlist (or not uppercase).
	ErrUnknownCurrency = errors.New("unknown currency")
	// ErrNotPositive: zero or negative amounts are not orders.
	ErrNotPositive = errors.New("amount must be greater than zero")
	// ErrTooPrecise: more decimals than the currency has minor digits.
	ErrTooPrecise = errors.New("too many decimal places for the currency")
	// ErrOverflow: the amount does not fit in 64-bit minor units.
	ErrOverflow = errors.New("amount too large")
	// ErrSyntax: not a plain decimal number.
	ErrSyntax = errors.New("amount is not a decimal number")
)

// minorDigits is the allowlist of ISO 4217 currencies and their minor-unit exponents.
var minorDigits = map[string]int{
	"AED": 2, "ARS": 2, "AUD": 2, "BGN": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2,
	"CLP": 0, "CNY": 2, "COP": 2, "CZK": 2, "DKK": 2, "EGP": 2, "EUR": 2, "GBP": 2,
	"HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0,
	"KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2, "NGN": 2, "NOK": 2, "NZD": 2, "OMR": 3,
	"PHP": 2, "PLN": 2, "RON": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3,
	"TRY": 2, "TWD": 2, "UAH": 2, "USD": 2, "VND": 0, "ZAR": 2,
}

// MinorDigits reports how many decimal places the currency has, and whether it is
// on the allowlist.
func MinorDigits(currency string) (int, bool) {
	d, ok := minorDigits[currency]
	return d, ok
}

// Parse reads a decimal in major units ("200", "19.99", "1.234") for the currency.
// It accepts the JSON number grammar without exponent; trailing zeros beyond the
// currency's digits are allowed ("19.990" is 19.99 USD).
func Parse(decimal, currency string) (Amount, error) {
	digits, ok := minorDigits[currency]
	if !ok {
		return Amount{}, ErrUnknownCurrency
	}
	s := decimal
	if strings.HasPrefix(s, "-") {
		return Amount{}, ErrNotPositive
	}
	intPart, frac, hasDot := strings.Cut(s, ".")
	if !isDigits(intPart) || (hasDot && !isDigits(frac)) {
		return Amount{}, ErrSyntax
	}
	if len(intPart) > 1 && intPart[0] == '0' {
		return Amount{}, ErrSyntax // JSON forbids leading zeros
	}
	trimmed := strings.TrimRight(frac, "0")
	if len(trimmed) > digits {
		return Amount{}, ErrTooPrecise
	}
	frac = trimmed + strings.Repeat("0", digits-len(trimmed))
	minor, err := strconv.ParseInt(intPart+frac, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return Amount{}, ErrOverflow
		}
		return Amount{}, ErrSyntax
	}
	if minor <= 0 {
		return Amount{}, ErrNotPositive
	}
	return Amount{Minor: minor, Currency: currency}, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Decimal formats the amount in major units with no trailing zeros after the point:
// 20000 USD → "200", 1999 USD → "19.99", 1234 BHD → "1.234", 1950 USD → "19.5".
func (a Amount) Decimal() string {
	digits := minorDigits[a.Currency]
	s := strconv.FormatInt(a.Minor, 10)
	if digits == 0 {
		return s
	}
	if len(s) <= digits {
		s = strings.Repeat("0", digits-len(s)+1) + s
	}
	intPart, frac := s[:len(s)-digits], strings.TrimRight(s[len(s)-digits:], "0")
	if frac == "" {
		return intPart
	}
	return intPart + "." + frac
}

// String is for logs: "19.99 USD".
func (a Amount) String() string { return fmt.Sprintf("%s %s", a.Decimal(), a.Currency) }
