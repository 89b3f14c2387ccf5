// The express-session side of the interop check: the same routes as python_app.py.
// Configured by environment: PORT (0: any free port), SECRET (comma-separated, first signs),
// STORE (file|redis|sqlite|postgres), STORE_PATH, REDIS_SOCKET, SQLITE_PATH, PG_HOST, PG_USER,
// PG_DATABASE, PG_TABLE. Prints "listening <port>" once it serves.
'use strict';
const crypto = require('crypto');
const express = require('express');
const session = require('express-session');
const flash = require('connect-flash');

async function makeStore() {
  if (process.env.STORE === 'sqlite') {
    const SQLiteStore = require('connect-sqlite3')(session);
    const sqlite3 = require('sqlite3');
    const db = new sqlite3.Database(process.env.SQLITE_PATH);
    db.configure('busyTimeout', 10000);   // sqlite3's default, 1 s, is short for a shared file
    return new SQLiteStore({ db, table: 'sessions', concurrentDb: true });
  }
  if (process.env.STORE === 'postgres') {
    const PgStore = require('connect-pg-simple')(session);
    const { Pool } = require('pg');
    const pool = new Pool({ host: process.env.PG_HOST, user: process.env.PG_USER, database: process.env.PG_DATABASE });
    return new PgStore({ pool, tableName: process.env.PG_TABLE, createTableIfMissing: false, pruneSessionInterval: false });
  }
  if (process.env.STORE === 'redis') {
    const RedisStore = require('connect-redis').default;
    const { createClient } = require('redis');
    const client = createClient({ socket: { path: process.env.REDIS_SOCKET } });
    await client.connect();
    return new RedisStore({ client, prefix: 'sess:', ttl: 86400 });
  }
  const FileStore = require('session-file-store')(session);
  return new FileStore({ path: process.env.STORE_PATH, ttl: 86400, retries: 0, reapInterval: -1,
                         logFn: () => {} });
}

async function main() {
  const store = await makeStore();
  const app = express();
  app.use(session({
    secret: (process.env.SECRET || 'interop secret').split(','),
    name: 'connect.sid',
    resave: false,
    saveUninitialized: false,
    store,
    cookie: { maxAge: 86400000, sameSite: 'lax' },
    // A test may ask for a given ID, to compare both sides' cookies for it.
    genid: (req) => req.get('x-interop-id') || crypto.randomBytes(24).toString('base64url'),
  }));
  app.use(flash());

  const me = (req) => ({ side: 'node', id: req.sessionID, user: req.session.user || null,
                         views: req.session.views || null,
                         // who Flask-Login and Django's auth logged in, as they store it
                         flaskUser: req.session._user_id || null, djangoUser: req.session._auth_user_id || null });
  app.get('/ping', (req, res) => res.json({ ok: true }));
  app.get('/count', (req, res) => { req.session.views = (req.session.views || 0) + 1; res.json(me(req)); });
  app.get('/whoami', (req, res) => res.json(me(req)));
  app.post('/flash', (req, res) => res.json({ count: req.flash(req.query.type, req.query.msg) }));
  app.get('/flash', (req, res) => res.json({ messages: req.flash(req.query.type) }));
  app.post('/login', (req, res, next) => req.session.regenerate((err) => {
    if (err) return next(err);
    req.session.user = req.query.user;
    res.json(me(req));
  }));
  app.post('/logout', (req, res, next) => req.session.destroy((err) => err ? next(err) : res.json({ ok: true })));
  app.post('/short', (req, res) => {
    req.session.cookie.maxAge = Number(req.query.ms);
    req.session.views = (req.session.views || 0) + 1;
    res.json(me(req));
  });
  app.get('/length', (req, res, next) => store.length((err, n) => err ? next(err) : res.json({ length: n })));
  // every session the store lists: all() (connect-redis, connect-sqlite3), list() (session-file-store)
  app.get('/all', (req, res, next) => (store.all || store.list).call(store, (err, all) => err ? next(err)
    : res.json({ count: Array.isArray(all) ? all.length : Object.keys(all || {}).length })));
  const server = app.listen(Number(process.env.PORT), '127.0.0.1',
                            () => console.log(`listening ${server.address().port}`));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

main().catch((err) => { console.error(err); process.exit(1); });
