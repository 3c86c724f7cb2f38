"""The B2BUA as a cluster: Kamailio's dispatcher in front, N worker processes behind it.

`topology` derives each worker's share of the file; `edge_link` is the trust rule between
a worker and the edge; `edge_config` writes Kamailio's configuration; `worker` runs one
worker (drain, repair of a dead predecessor's recordings); `supervisor` runs them all.
"""
