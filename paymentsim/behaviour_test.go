package paymentsim

import (
	"go/parser"
	"go/token"
	"strings"
	"testing"
)

func TestBehaviourFor(t *testing.T) {
	tests := []struct {
		amount int64
		want   Kind
	}{
		{100, KindApprove},
		{20000, KindApprove},
		{1950, KindApprove},
		{1951, KindInsufficientFunds},
		{51, KindInsufficientFunds},
		{100052, KindCardDeclined},
		{1953, KindApprove},
		{1961, KindError},
		{1962, KindUnavailable},
		{1963, KindUnavailableThenApprove},
		{1964, KindApprove},
		{1971, KindSlow},
		{1972, KindTimeoutAfterCharge},
		{1973, KindResetThenApprove},
		{1999, KindApprove},
	}
	for _, tt := range tests {
		if got := BehaviourFor(tt.amount).Kind; got != tt.want {
			t.Errorf("BehaviourFor(%d) = %s, want %s", tt.amount, got, tt.want)
		}
	}
}

func TestPackageDocShowsTheTable(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "paymentsim.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	want := "\t" + strings.ReplaceAll(strings.TrimSuffix(Table(), "\n"), "\n", "\n\t") + "\n"
	if doc := f.Doc.Text(); !strings.Contains(doc, want) {
		t.Errorf("the package comment's table is out of date; paste this, from Table():\n%s", want)
	}
}
