PRAGMA cache_size = -8000;
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER, pad BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 4000)
INSERT INTO t SELECT x, hex(randomblob(12)), abs(random()) % 500, randomblob(900) FROM c;
CREATE INDEX tk ON t(k);
CREATE INDEX tv ON t(v);
SELECT v, count(*), sum(length(pad)) FROM t GROUP BY v ORDER BY 2 DESC LIMIT 3;
SELECT count(*) FROM t WHERE k > 'A' AND v < 100;
UPDATE t SET v = v + 1 WHERE id % 7 = 0;
SELECT sum(v) FROM t ORDER BY k;
