"""Peers measured beside us in the same run (llama.cpp's llama-server)."""
