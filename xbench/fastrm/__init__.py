"""FastRM's lifecycle: proxy heads and files (heads, proxy, registry), labels from a reference
method (labels), training (train), scoring (evaluate), ablation tables (ablate) and the
``xbench fastrm`` command (cli). The method plugin itself is ``xbench.methods.fastrm``."""
