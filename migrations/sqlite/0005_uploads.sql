-- Uploaded source videos, owned by the API key that sent them.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY NOT NULL,
    owner       TEXT NOT NULL,
    num_frames  INTEGER NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    fps         DOUBLE PRECISION NOT NULL,
    size_bytes  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
