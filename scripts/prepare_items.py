from ctrlbench.data.items import prepare_items
from ctrlbench.jobs import logged

p = snakemake.params
with logged(snakemake.log[0]):
    prepare_items(p.fmt, p.root, p.split, snakemake.output.table, p.shard_dir, p.n_shards, p.max_items,
                  region_filter=p.region_filter, counts_csv=snakemake.output.counts, layout=p.layout)
