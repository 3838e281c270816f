"""data: competition folders read as they ship (sources.py), decoded (decode.py) into the memory-mapped
cache (cache.py), split into stratified folds (folds.py); the embedded demo set (demo.py)."""
