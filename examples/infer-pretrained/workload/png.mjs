// A minimal PNG decoder (node:zlib for inflate): 8-bit grayscale, gray+alpha, RGB, RGBA and
// palette images, not interlaced — what scanners, screenshots and ImageMagick write by default.
// Returns { width, height, rgb: Uint8Array(width * height * 3) }, alpha composited on white.
import { inflateSync } from 'node:zlib';

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

export function decodePng(buf) {
  if (buf.length < 8 || !buf.subarray(0, 8).equals(SIGNATURE)) throw new Error('not a PNG file');
  let off = 8;
  let header;
  let palette;
  let transparency;
  const idat = [];
  while (off + 8 <= buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    off += 12 + len;
    if (type === 'IHDR') {
      header = { width: data.readUInt32BE(0), height: data.readUInt32BE(4), depth: data[8], color: data[9], interlace: data[12] };
    } else if (type === 'PLTE') palette = data;
    else if (type === 'tRNS') transparency = data;
    else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
  }
  if (!header) throw new Error('PNG without IHDR');
  const { width, height, depth, color, interlace } = header;
  const channels = CHANNELS[color];
  if (channels === undefined) throw new Error(`unsupported PNG color type ${color}`);
  if (depth !== 8) throw new Error(`unsupported PNG bit depth ${depth} (8 is supported)`);
  if (interlace !== 0) throw new Error('interlaced PNGs are not supported');
  if (width === 0 || height === 0 || width * height > 50_000_000) throw new Error(`unreasonable PNG size ${width}x${height}`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  if (raw.length < height * (stride + 1)) throw new Error('PNG image data is truncated');
  const pixels = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const out = pixels.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? pixels.subarray((y - 1) * stride, y * stride) : null;
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? out[i - channels] : 0;
      const b = prev ? prev[i] : 0;
      const c = prev && i >= channels ? prev[i - channels] : 0;
      let v = line[i];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new Error(`bad PNG filter ${filter} on row ${y}`);
      out[i] = v & 0xff;
    }
  }
  const rgb = new Uint8Array(width * height * 3);
  const over = (v, alpha) => Math.round((v * alpha + 255 * (255 - alpha)) / 255);
  for (let p = 0; p < width * height; p++) {
    let r;
    let g;
    let b;
    let alpha = 255;
    const s = p * channels;
    if (color === 0 || color === 4) {
      r = g = b = pixels[s];
      if (color === 4) alpha = pixels[s + 1];
    } else if (color === 3) {
      const idx = pixels[s];
      if (!palette || 3 * idx + 2 >= palette.length) throw new Error('PNG palette index out of range');
      r = palette[3 * idx];
      g = palette[3 * idx + 1];
      b = palette[3 * idx + 2];
      if (transparency && idx < transparency.length) alpha = transparency[idx];
    } else {
      r = pixels[s];
      g = pixels[s + 1];
      b = pixels[s + 2];
      if (color === 6) alpha = pixels[s + 3];
    }
    rgb[3 * p] = over(r, alpha);
    rgb[3 * p + 1] = over(g, alpha);
    rgb[3 * p + 2] = over(b, alpha);
  }
  return { width, height, rgb };
}
