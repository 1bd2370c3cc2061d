"""Retrieval for tunelab: documents and chunks, an on-disk store, BM25 / dense (FAISS) / hybrid search,
a leakage check, prompt augmentation and retrieval evaluation. `tunelab rag --help` lists the commands
(`tunelab.rag.command`); docs/retrieval.md explains the design.

    from tunelab.rag.retrieve import Retriever
    from tunelab.rag.augment import augment
    hits = Retriever("kb").search("How many clips did Natalia sell?", k=3)
    messages = augment([{"role": "user", "content": "How many clips did Natalia sell?"}], hits)

Modules import their heavy dependencies (torch, transformers, faiss, jieba) inside the functions that
need them.
"""
