"""Named builders for ``pf.build``; each module registers its family's names."""
