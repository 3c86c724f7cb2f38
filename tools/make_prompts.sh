#!/bin/sh
# Regenerate media/prompts/*.wav: 8 kHz, mono, signed 16-bit PCM.
#
# Reproducible by construction: espeak-ng is a deterministic formant synthesiser (no
# randomness) and is pinned here to one voice, speed, pitch and amplitude; sox runs with
# -R (repeatable: fixed random seed) and -D (no dither), so the same tool versions give
# byte-identical files. Different espeak-ng/sox versions may differ slightly in timbre;
# the committed files are the reference, regenerate only when the wording changes.
set -eu

VOICE="en-gb"   # British English, matching the demo organisation
SPEED=150       # words per minute: espeak-ng's default is 175, slower is clearer on G.711
PITCH=50        # espeak-ng default
AMPLITUDE=100   # espeak-ng default
RATE=8000       # G.711 sample rate: the relay plays prompts without resampling

here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/media/prompts"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

make_prompt() {
    name=$1
    text=$2
    espeak-ng -v "$VOICE" -s "$SPEED" -p "$PITCH" -a "$AMPLITUDE" -w "$tmp/$name.raw.wav" "$text"
    # Resample to 8 kHz mono 16-bit, trim the synthesiser's leading/trailing silence, peak
    # normalise to -3 dBFS (headroom for G.711), then 100 ms of lead-in and 200 ms tail.
    sox -R -D "$tmp/$name.raw.wav" -r "$RATE" -c 1 -b 16 -e signed-integer "$out/$name.wav" \
        silence 1 0.01 0.1% reverse silence 1 0.01 0.1% reverse \
        gain -n -3 pad 0.1 0.2
}

make_prompt paused "Recording paused"
make_prompt recording "This call is being recorded"
