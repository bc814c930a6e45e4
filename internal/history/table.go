package history

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Table is a small table printed as Markdown with aligned columns, so that it reads well in a
// terminal and renders in docs/RELIABILITY.md.
type Table struct {
	Header []string
	Rows   [][]string
}

// Write prints the table. Cells containing '|' are escaped.
func (t Table) Write(w io.Writer) error {
	width := make([]int, len(t.Header))
	all := append([][]string{t.Header}, t.Rows...)
	for _, row := range all {
		for i, c := range row {
			if i < len(width) {
				width[i] = max(width[i], utf8.RuneCountInString(cell(c)))
			}
		}
	}
	line := func(row []string) string {
		var b strings.Builder
		b.WriteString("|")
		for i := range width {
			c := ""
			if i < len(row) {
				c = cell(row[i])
			}
			b.WriteString(" " + c + strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)) + " |")
		}
		return b.String()
	}
	var b strings.Builder
	b.WriteString(line(t.Header) + "\n|")
	for _, n := range width {
		b.WriteString(strings.Repeat("-", n+2) + "|")
	}
	b.WriteString("\n")
	for _, row := range t.Rows {
		b.WriteString(line(row) + "\n")
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("history: write table: %w", err)
	}
	return nil
}

// String returns the table as Write prints it.
func (t Table) String() string {
	var b strings.Builder
	_ = t.Write(&b)
	return b.String()
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
