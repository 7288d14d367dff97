// Checks an NHS number as it is typed (10 digits, Modulus 11 check digit). The server checks it again;
// the page works the same without this script.
(function () {
  "use strict";
  function valid(digits) {
    if (!/^[0-9]{10}$/.test(digits)) { return false; }
    var total = 0;
    for (var i = 0; i < 9; i += 1) { total += Number(digits[i]) * (10 - i); }
    var check = 11 - (total % 11);
    if (check === 11) { check = 0; }
    return check !== 10 && check === Number(digits[9]);
  }
  document.querySelectorAll("input[data-nhs-number]").forEach(function (input) {
    var live = document.getElementById(input.id + "-live");
    input.addEventListener("input", function () {
      var digits = input.value.replace(/\s+/g, "");
      var message = "";
      if (digits.length > 0 && !/^[0-9]*$/.test(digits)) { message = "Use digits only"; }
      else if (digits.length === 10) { message = valid(digits) ? "Valid NHS number" : "Not a valid NHS number: check the digits"; }
      else if (digits.length > 10) { message = "Too many digits: an NHS number has 10"; }
      if (live) { live.textContent = message; }
    });
  });
}());
