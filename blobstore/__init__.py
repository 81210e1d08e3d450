"""Photo-blob storage engines: Haystack hot volumes, f4 warm cells, cold archive packs, read path, scrub and repair."""
