#!/usr/bin/env bash
# Start or stop the local Airflow of `make airflow` / `make airflow-stop`.
#
#   AIRFLOW_HOME=/abs/.airflow AIRFLOW_PORT=8080 scripts/airflow-standalone.sh start|stop
#
# start: `airflow standalone` (LocalExecutor, SQLite; its settings are in
#   $AIRFLOW_HOME/airflow.cfg, written by scripts/airflow_home.py) in a session of its own
#   (setsid), so that its PID, recorded in $AIRFLOW_HOME/standalone.pid, is also the ID of
#   the process group holding every process it starts. Log: $AIRFLOW_HOME/standalone.log.
#   Waits (at most AIRFLOW_START_TIMEOUT s, default 180) for the API to answer, then prints
#   the UI address and the login standalone generated.
# stop: SIGTERM to that process group only, waits for every member to exit (SIGKILL after
#   AIRFLOW_STOP_TIMEOUT s, default 30), removes the pid file. Nothing running: a message.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOME_DIR=${AIRFLOW_HOME:?set AIRFLOW_HOME to the absolute path of the Airflow home}
PORT=${AIRFLOW_PORT:-8080}
BIN=${BIN:-$ROOT/.venv/bin}
PIDFILE=$HOME_DIR/standalone.pid
LOG=$HOME_DIR/standalone.log
PASSWORDS=$HOME_DIR/simple_auth_manager_passwords.json.generated

# true while any process of group $1 exists
group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

print_login() {
    local deadline=$((SECONDS + 30))
    # standalone writes the generated password before it starts the components
    while [ ! -s "$PASSWORDS" ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
    echo "Airflow UI: http://127.0.0.1:$PORT  (log: $LOG, stop: make airflow-stop)"
    if [ -s "$PASSWORDS" ]; then
        "$BIN/python" -c 'import json, sys
for user, password in json.load(open(sys.argv[1])).items():
    print(f"login: user {user}  password {password}")' "$PASSWORDS"
    else
        echo "login: see [core] simple_auth_manager_users in $HOME_DIR/airflow.cfg"
    fi
}

start() {
    if [ -f "$PIDFILE" ]; then
        local old
        old=$(cat "$PIDFILE")
        if group_alive "$old"; then
            echo "local Airflow already running (process group $old)"
            print_login
            return 0
        fi
        rm -f "$PIDFILE"  # left by a run that ended on its own
    fi
    cd "$ROOT"  # tasks resolve relative paths (out/demo, the demo corpus) from here
    # no job control in a script: the background child is not a group leader, so setsid
    # makes it a session (and group) leader without forking: $! is the group's ID
    # standalone starts its components as `airflow ...` from PATH
    PATH=$BIN:$PATH AIRFLOW_HOME=$HOME_DIR setsid "$BIN/airflow" standalone >"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    echo "starting Airflow standalone (process group $pid, home $HOME_DIR, port $PORT)"
    local deadline=$((SECONDS + ${AIRFLOW_START_TIMEOUT:-180}))
    until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/api/v2/version" 2>/dev/null; do
        if ! group_alive "$pid"; then
            echo "airflow standalone exited; the end of $LOG:" >&2
            tail -n 30 "$LOG" >&2
            rm -f "$PIDFILE"
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "the API did not answer on 127.0.0.1:$PORT in time; stopping. End of $LOG:" >&2
            tail -n 30 "$LOG" >&2
            stop >&2
            return 1
        fi
        sleep 1
    done
    print_login
}

stop() {
    if [ ! -f "$PIDFILE" ]; then
        echo "no local Airflow running (no $PIDFILE)"
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    case $pid in '' | *[!0-9]*)
        echo "ignoring $PIDFILE: not a process ID" >&2
        rm -f "$PIDFILE"
        return 0 ;;
    esac
    if ! group_alive "$pid"; then
        echo "no local Airflow running (process group $pid has ended)"
        rm -f "$PIDFILE"
        return 0
    fi
    echo "stopping Airflow standalone (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    local deadline=$((SECONDS + ${AIRFLOW_STOP_TIMEOUT:-30}))
    while group_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    if group_alive "$pid"; then
        echo "still running after SIGTERM: SIGKILL to process group $pid"
        kill -KILL -- "-$pid" 2>/dev/null || true
        while group_alive "$pid"; do sleep 0.2; done
    fi
    rm -f "$PIDFILE"
    echo "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
