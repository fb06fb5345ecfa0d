// The inbox without reloading: the waiting count in the navigation, the inbox lists and a
// conversation's transcript ask the server every few seconds (the server renders the HTML, escaped);
// the reply box shows how many SMS segments the text takes, counted by the server's segment counter.
const badge = document.querySelector("[data-inbox-badge]");
const lists = document.querySelector("#inbox[data-live-url]");
const transcript = document.querySelector("#transcript[data-live-url]");
const replyBox = document.querySelector("textarea[data-segments-url]");

const getJson = async (url) => {
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) return null;
    return await response.json(); // throws on the login page (the session ended)
  } catch {
    return null;
  }
};

const every = (ms, task) => {
  const loop = async () => {
    await task();
    setTimeout(loop, ms);
  };
  setTimeout(loop, ms);
};

const showCounts = (counts) => {
  if (badge && counts) badge.textContent = counts.waiting ? String(counts.waiting) : "";
};

if (badge) {
  const refresh = async () => showCounts(await getJson(badge.dataset.inboxBadge));
  refresh();
  if (!lists) every(10000, refresh);
}

if (lists) {
  every(Number(lists.dataset.interval) || 3000, async () => {
    const data = await getJson(lists.dataset.liveUrl);
    if (!data) return;
    showCounts(data.counts);
    if (lists.innerHTML !== data.html) lists.innerHTML = data.html;
  });
}

if (transcript) {
  const state = document.querySelector("#conv-state");
  const who = document.querySelector("#conv-who");
  every(Number(transcript.dataset.interval) || 3000, async () => {
    const data = await getJson(transcript.dataset.liveUrl);
    if (!data) return;
    if (transcript.innerHTML !== data.html) transcript.innerHTML = data.html;
    const conv = data.conversation;
    if (state && conv.state) {
      state.textContent = conv.state;
      state.className = `tag ${conv.state}`;
    }
    if (who) who.textContent = conv.operator ? `with ${conv.operator}` : conv.waiting ? `waiting ${conv.waiting}` : "";
  });
}

const segments = document.querySelector("#segments[data-sms]");
if (replyBox && segments) {
  let timer;
  replyBox.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const url = `${replyBox.dataset.segmentsUrl}?${new URLSearchParams({ text: replyBox.value })}`;
      const counted = await getJson(url);
      if (!counted) return;
      for (const name of ["segments", "units", "encoding"]) {
        segments.querySelector(`[data-field="${name}"]`).textContent = String(counted[name]);
      }
    }, 250);
  });
}
