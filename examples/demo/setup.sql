-- Run once, with `mariadbd --bootstrap`, on the first Primary after mariadb-install-db.
FLUSH PRIVILEGES;
CREATE DATABASE demo;
CREATE USER 'demo'@'%' IDENTIFIED BY 'demo';
GRANT ALL ON demo.* TO 'demo'@'%';
CREATE TABLE demo.ledger (
    id      INT PRIMARY KEY,
    payload VARCHAR(200) NOT NULL,
    node    VARCHAR(16) NOT NULL,
    at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;
