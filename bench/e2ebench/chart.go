package main

import (
	"fmt"
	"image/color"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var (
	blue   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	orange = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	green  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	red    = color.RGBA{R: 214, G: 39, B: 40, A: 255}
)

// chart draws p99 latency against the offered throughput for the rising-load steps of the
// baseline (one point per step; a cross where the step was not sustained), the steps
// with 2 workers for comparison, and the hold at 70 %.
func chart(path string, base search, hold step, scale []search) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("orderpipe end to end on %d cores, everything co-located: p99 latency vs throughput (max sustained %.0f/s)",
		runtime.NumCPU(), base.Max)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "throughput offered, orders/s (open loop; where a step was not sustained fewer completed)"
	p.Y.Label.Text = "p99 latency, ms (log scale)"
	p.X.Tick.Marker = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		ticks := plot.DefaultTicks{}.Ticks(lo, hi)
		for i := range ticks {
			if ticks[i].Label != "" { // "500", not "500.00"
				ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
			}
		}
		return ticks
	})
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true

	series := func(name string, steps []step, y func(step) float64, c color.Color, dashed bool) error {
		steps = append([]step(nil), steps...)
		sort.Slice(steps, func(i, j int) bool { return steps[i].Rate < steps[j].Rate })
		var all, bad plotter.XYs
		for _, s := range steps {
			xy := plotter.XY{X: s.Rate, Y: max(y(s), 0.1)} // log scale: no zero
			all = append(all, xy)
			if !s.Sustained {
				bad = append(bad, xy)
			}
		}
		if len(all) == 0 {
			return nil
		}
		line, points, err := plotter.NewLinePoints(all)
		if err != nil {
			return err
		}
		line.Color, points.Color, points.Shape = c, c, draw.CircleGlyph{}
		if dashed {
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(line, points)
		p.Legend.Add(name, line, points)
		if len(bad) > 0 {
			crosses, err := plotter.NewScatter(bad)
			if err != nil {
				return err
			}
			crosses.Color, crosses.Shape, crosses.Radius = red, draw.CrossGlyph{}, vg.Points(6)
			p.Add(crosses)
		}
		return nil
	}
	c2t := func(s step) float64 { return s.C2TP99Ms }
	post := func(s step) float64 { return s.APIP99Ms }
	if err := series("create -> terminal p99, 1 worker", base.Steps, c2t, blue, false); err != nil {
		return err
	}
	if err := series("POST /orders p99, 1 worker", base.Steps, post, orange, false); err != nil {
		return err
	}
	for _, s := range scale {
		if strings.HasPrefix(s.Key, "workers2_relays1") {
			if err := series("create -> terminal p99, 2 workers", s.Steps, c2t, green, true); err != nil {
				return err
			}
		}
	}
	if hold.Rate > 0 {
		h, err := plotter.NewScatter(plotter.XYs{{X: hold.Rate, Y: max(hold.C2TP99Ms, 0.1)},
			{X: hold.Rate, Y: max(hold.APIP99Ms, 0.1)}})
		if err != nil {
			return err
		}
		h.Color, h.Shape, h.Radius = color.Black, draw.PyramidGlyph{}, vg.Points(5)
		p.Add(h)
		p.Legend.Add("hold at 70 % (create -> terminal, POST)", h)
	}
	for _, g := range []struct {
		name string
		ms   float64
		c    color.Color
	}{{"goal: create -> terminal p99 < 250 ms", 250, blue}, {"goal: POST p99 < 50 ms", 50, orange}} {
		line := plotter.NewFunction(func(float64) float64 { return g.ms })
		line.Color, line.Dashes, line.Width = g.c, []vg.Length{vg.Points(1), vg.Points(3)}, vg.Points(1)
		p.Add(line)
		p.Legend.Add(g.name, line)
	}
	// Room above the data for the legend.
	p.Y.Min, p.Y.Max = min(p.Y.Min, 10), p.Y.Max*8
	// Only for the legend: the crosses drawn over the series.
	p.Legend.Add("step not sustained", &plotter.Scatter{GlyphStyle: draw.GlyphStyle{Color: red,
		Shape: draw.CrossGlyph{}, Radius: vg.Points(6)}})
	return p.Save(10*vg.Inch, 6*vg.Inch, path)
}
