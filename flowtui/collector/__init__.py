"""The collector: NFLOG from the kernel to the flow store, headless (never imports the UI).

Stages, in order of dependency (each module holds one):

    nflog        raw AF_NETLINK/NETLINK_NETFILTER socket: bind groups, configure, batched recv
    framing      received skbs -> netlink messages (what the reader hands over: RawBatch)
    parse        NFLOG attributes -> columns (numpy), sequence stream
    sequence     sequence-gap tracking (kernel drops), malformed vs overrun
    decode       packet headers -> columns (numpy): IPv4/IPv6, TCP/UDP/SCTP/ICMP
    attribution  NFLOG prefix `ft:<A|D|P|L><id>` -> RuleRef, through a reloading RuleTable
    enrich       address -> endpoint metadata (pod, namespace, labels, node, HEP, network set)
    pipeline     one received batch -> event rows (the stages above, in columns)
    aggregate    events + conntrack -> flows per time bucket
    conntrack    DESTROY events with accounting (allowed flows' packets and bytes)
    counters     nft rule counters (exact counts, rate-limited logging)
    loss         loss accounting by cause
    config       CollectorConfig and a reading point (one namespace's sockets)
    writer       the writer thread: batches in, rows out (the only user of the store)
    service      the Collector: reader thread -> queue -> writer thread; lifecycle; `collect()`
    testbed      a two-namespace lab for the kernel tests and the benchmark

The store it writes is `flowtui.store` (DuckDB). See `flowtui collect --help`.
"""
