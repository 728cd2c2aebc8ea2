# Scripts, not test modules: the atheris harness needs atheris, which CI does not install.
collect_ignore = ["atheris_readers.py", "make_corpus.py"]
