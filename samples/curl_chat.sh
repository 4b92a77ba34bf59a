#!/usr/bin/env bash
# Chat with Chorus using curl: one non-streaming request, one streaming (SSE) request, speech,
# a photo and a PDF in, and a transcription. Run `make serve` first.
set -euo pipefail
BASE=${CHORUS_URL:-http://127.0.0.1:8000}
HERE=$(cd "$(dirname "$0")" && pwd)

echo "--- non-streaming"
curl -sS "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "chorus",
  "messages": [
    {"role": "system", "content": "You are a friendly customer-service assistant."},
    {"role": "user", "content": "My parcel arrived damaged. What can I do?"}
  ],
  "max_tokens": 64, "temperature": 0
}'
echo

echo "--- streaming"
curl -sSN "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "chorus",
  "messages": [{"role": "user", "content": "Say hello to a customer in one sentence."}],
  "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}
}'

echo "--- speech in (input_audio, transcript fusion)"
AUDIO_B64=$(base64 -w0 "$HERE/audio/where_is_my_order.wav")
curl -sS "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d @- <<JSON
{"model": "chorus", "max_tokens": 64, "temperature": 0,
 "messages": [{"role": "user", "content": [
   {"type": "text", "text": "Answer this caller briefly:"},
   {"type": "input_audio", "input_audio": {"data": "$AUDIO_B64", "format": "wav"}}]}]}
JSON
echo

echo "--- a photo in (image_url; the default service reads it by OCR)"
IMAGE_B64=$(base64 -w0 "$HERE/images/parcel_label.jpg")
curl -sS "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d @- <<JSON
{"model": "chorus", "max_tokens": 64, "temperature": 0,
 "messages": [{"role": "user", "content": [
   {"type": "text", "text": "What is the order number on this label?"},
   {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,$IMAGE_B64"}}]}]}
JSON
echo

echo "--- a PDF in (file part)"
PDF_B64=$(base64 -w0 "$HERE/documents/invoice.pdf")
curl -sS "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d @- <<JSON
{"model": "chorus", "max_tokens": 64, "temperature": 0,
 "messages": [{"role": "user", "content": [
   {"type": "text", "text": "What is the total amount due on this invoice?"},
   {"type": "file", "file": {"filename": "invoice.pdf", "file_data": "data:application/pdf;base64,$PDF_B64"}}]}]}
JSON
echo

echo "--- transcription"
curl -sS "$BASE/v1/audio/transcriptions" -F model=whisper-1 -F file=@"$HERE/audio/where_is_my_order.wav"
echo

echo "--- subtitles (SRT), then word timestamps"
curl -sS "$BASE/v1/audio/transcriptions" -F model=whisper-1 -F file=@"$HERE/audio/where_is_my_order.wav" \
  -F response_format=srt
curl -sS "$BASE/v1/audio/transcriptions" -F model=whisper-1 -F file=@"$HERE/audio/where_is_my_order.wav" \
  -F response_format=verbose_json -F 'timestamp_granularities[]=word'
echo
