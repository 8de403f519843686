"""kvcompress: benchmark KV-cache compression."""
