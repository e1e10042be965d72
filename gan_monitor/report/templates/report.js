// Filters the unit cards by concept, category and interpretability, and sorts them by
// IoU (high first) or FID (low first; cards without a FID last).
function applyFilters(){
  var concept=document.getElementById('concept').value, category=document.getElementById('category').value;
  var onlyInterp=document.getElementById('interp').checked, key=document.getElementById('sort').value;
  document.querySelectorAll('.cards').forEach(function(box){
    var cards=Array.prototype.slice.call(box.querySelectorAll('.card'));
    cards.sort(function(a,b){
      var x=parseFloat(a.dataset[key]), y=parseFloat(b.dataset[key]);
      if(isNaN(x)) x=(key==='fid')?Infinity:-Infinity; if(isNaN(y)) y=(key==='fid')?Infinity:-Infinity;
      return key==='fid' ? x-y : y-x;});
    cards.forEach(function(c){
      var show=(!concept||c.dataset.concept===concept)&&(!category||c.dataset.category===category)&&
               (!onlyInterp||c.classList.contains('interpretable'));
      c.style.display=show?'':'none'; box.appendChild(c);});
  });
}
document.addEventListener('DOMContentLoaded',function(){
  ['concept','category','interp','sort'].forEach(function(id){
    document.getElementById(id).addEventListener('change',applyFilters);});
  applyFilters();
});
