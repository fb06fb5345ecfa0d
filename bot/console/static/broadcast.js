// Live progress on a broadcast's page: while it is waiting, preparing, scheduled or sending, ask its
// status.json every few seconds and update the state, the counts and the bar; reload once (when it
// is done or cancelled) and stop. These polls do not keep the session alive (the server does not
// count them as activity), and polling stops when the session has ended.
const live = document.querySelector("#progress[data-live]");

const LIVE = new Set(["waiting", "preparing", "scheduled", "sending"]);

if (live) {
  const every = Number(live.dataset.interval) || 3000;
  const put = (selector, value) => {
    for (const cell of live.querySelectorAll(selector)) cell.textContent = String(value);
  };
  const poll = async () => {
    let status;
    try {
      const response = await fetch(live.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (!response.ok || response.redirected) return; // the session ended: stop
      status = await response.json(); // throws on the login page (the session ended): stop
    } catch {
      return;
    }
    for (const [name, count] of Object.entries(status.messages)) put(`[data-count="${name}"]`, count);
    put('[data-count="accepted"]', status.accepted);
    put('[data-count="declined"]', status.declined);
    put('[data-field="finished"]', status.finished);
    put('[data-field="total"]', status.total);
    const state = document.querySelector("#state");
    state.textContent = status.status;
    state.className = `tag ${status.status}`;
    const bar = live.querySelector("progress");
    bar.max = Math.max(status.total, 1);
    bar.value = status.finished;
    if (LIVE.has(status.status)) {
      setTimeout(poll, every);
    } else {
      window.location.reload(); // done or cancelled: the page shows the results, without polling
    }
  };
  setTimeout(poll, every);
}
