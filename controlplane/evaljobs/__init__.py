"""Evaluation jobs: many contexts evaluated asynchronously, online or through GroqCloud's Batch API
(`POST /api/v1/evaluate/jobs`; `groqpolicy evaluate --file f.jsonl --via batch`)."""
