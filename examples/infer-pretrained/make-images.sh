#!/usr/bin/env bash
# Renders the example's text-line images (already committed; rerun only to change them).
# Needs ImageMagick 6 and the DejaVu fonts (Debian: apt-get install imagemagick fonts-dejavu-core).
# The images are our own text rendered in DejaVu fonts (free licence, rendered output unrestricted).
set -euo pipefail
cd "$(dirname "$0")"
fonts=(DejaVu-Sans DejaVu-Serif DejaVu-Sans-Mono DejaVu-Sans-Bold)
sizes=(30 36 28 40)
: >labels.tsv
i=0
while IFS= read -r text; do
  [ -z "$text" ] && continue
  name=$(printf 'line-%02d.png' "$i")
  font=${fonts[$((i % 4))]}
  size=${sizes[$(((i / 4) % 4))]}
  /usr/bin/convert -background white -fill black -font "$font" -pointsize "$size" "label:$text" \
    -bordercolor white -border 10x8 -colorspace Gray -depth 8 -strip \
    -define png:color-type=0 -define png:bit-depth=8 "images/$name"
  printf '%s\t%s\n' "$name" "$text" >>labels.tsv
  i=$((i + 1))
done <<'LINES'
Gridwork runs AI jobs on shared GPUs
Invoice 2026-0117 Total: 42.50 EUR
The quick brown fox jumps over the lazy dog
Checkpoint step 000200 written
ONNX Runtime on the CPU
Order #7731 shipped to Berlin
Temperature 21.5 C, humidity 48%
Batch inference across 3 providers
Hello, world!
PaddleOCR recognizes this line
Meeting moved to 14:30 on Friday
Audit passed: outputs match
LINES
echo "rendered $i images"
