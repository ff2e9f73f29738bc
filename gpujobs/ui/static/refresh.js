// Reload the page every data-refresh seconds so a running job can be watched, except while the
// operator is confirming an action (an open <details>) or typing in a field.
(function () {
  var seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  setInterval(function () {
    var busy = document.querySelector("details[open]") || document.activeElement.matches("input, select");
    if (!busy) window.location.reload();
  }, seconds * 1000);
})();
