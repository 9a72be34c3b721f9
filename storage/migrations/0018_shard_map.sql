-- The versioned shard map (issue 15): which shard-host actor, on which Ray node, serves each
-- logical shard. Gateways route by it; the coordinator (cluster/coordinator.py) changes it
-- when it moves a shard, drains a node or re-homes the shards of a dead host. Every change
-- bumps shard_map_meta.version in the same transaction, so a gateway that read version V
-- knows it is stale as soon as it sees another one. Ownership itself stays decided by
-- shard_lease.epoch (the fence of every commit): the map says where to send a command, the
-- lease says who may write.
CREATE TABLE shard_map (
    shard_id   integer PRIMARY KEY,
    host       text        NOT NULL,          -- the shard-host actor's Ray name
    node       text        NOT NULL DEFAULT '', -- the Ray node id of that actor ('' unknown)
    state      text        NOT NULL DEFAULT 'serving'
               CHECK (state IN ('serving', 'moving')),
    moving_to  text,                          -- the target host while state = 'moving'
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'moving') = (moving_to IS NOT NULL))
);

CREATE TABLE shard_map_meta (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO shard_map_meta (singleton, version) VALUES (true, 0);
