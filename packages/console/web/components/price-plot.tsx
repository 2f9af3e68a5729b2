/** Price over time (median ask per resource class) drawn with uPlot from the feed's price history. */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { PricePoint } from '../lib/types.ts';

const COLOURS = ['#1d4ed8', '#b91c1c', '#047857', '#7c3aed', '#b45309', '#0e7490'];

export function PricePlot({ history }: { history: PricePoint[] }) {
  const el = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const host = el.current;
    if (!host || history.length === 0) return;
    const classes = [...new Set(history.flatMap((p) => Object.keys(p.classes)))].sort();
    const points = [...history, { at: Date.now(), classes: history.at(-1)!.classes }];
    const xs = points.map((p) => p.at / 1000);
    const ys = classes.map((c) => points.map((p) => (p.classes[c] ? Number(p.classes[c].median) : null)));
    const width = Math.max(280, host.clientWidth || 600);
    const plot = new uPlot(
      {
        width,
        height: 220,
        series: [
          {},
          ...classes.map((c, i) => ({ label: `${c} median`, stroke: COLOURS[i % COLOURS.length], width: 2, paths: uPlot.paths.stepped?.({ align: 1 }) })),
        ],
        axes: [{}, { label: 'credits / unit-hour', size: 60 }],
        scales: { x: { time: true } },
      },
      [xs, ...ys] as uPlot.AlignedData,
      host,
    );
    return () => plot.destroy();
  }, [history]);
  return <div ref={el} class="plot" role="img" aria-label="Median ask per resource class over time" />;
}
