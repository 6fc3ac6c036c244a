% SPM12 spm_fMRI_design for tests/data/spm12_modulators.npz (see README.md). Run in a folder holding the SPM12
% files listed there, the two stubs and inputs.m (the *_onsets, *_rt, *_difficulty, *_durations arrays of the .npz).
inputs;

function U = cond(name, ons, dur, pnames, pvals, orders)
  U.name = {name}; U.ons = ons; U.dur = dur; U.orth = 1;
  if isempty(pnames)
    U.P = struct('name', 'none', 'P', [], 'h', 0);
  else
    for q = 1:numel(pnames)
      U.P(q) = struct('name', pnames{q}, 'P', pvals{q}, 'h', orders(q));
    end
  end
end

function [X, names] = design(RT, nscan, units, bfname, U, bfextra)
  SPM = struct();
  SPM.xY.RT = RT; SPM.nscan = nscan;
  SPM.xBF.T = 16; SPM.xBF.T0 = 8; SPM.xBF.UNITS = units; SPM.xBF.name = bfname;
  SPM.xBF.Volterra = 1; SPM.xBF.length = 32; SPM.xBF.order = 1;
  f = fieldnames(bfextra);
  for i = 1:numel(f), SPM.xBF.(f{i}) = bfextra.(f{i}); end
  SPM.Sess(1).U = U;
  SPM.Sess(1).C.C = []; SPM.Sess(1).C.name = {};
  SPM = spm_fMRI_design(SPM, false);
  X = full(SPM.xX.X); names = SPM.xX.name;
end

UA = cond('A', pm_a_onsets, zeros(size(pm_a_onsets)), {'rt', 'difficulty'}, {pm_a_rt, pm_a_difficulty}, [1 2]);
UB = cond('B', pm_b_onsets, zeros(size(pm_b_onsets)), {'rt'}, {pm_b_rt}, 1);
[pm_X, pm_names] = design(2, 100, 'secs', 'hrf', [UA UB], struct());
[pm_deriv_X, pm_deriv_names] = design(2, 100, 'secs', 'hrf (with time derivative)', [UA UB], struct());
[pm_fir_X, pm_fir_names] = design(2, 100, 'secs', 'Finite Impulse Response', [UA UB], struct('length', 8, 'order', 4));
SA = cond('A', sc_a_onsets, sc_a_durations, {'rt', 'difficulty'}, {sc_a_rt, sc_a_difficulty}, [1 1]);
SB = cond('B', sc_b_onsets, zeros(size(sc_b_onsets)), {}, {}, []);
[sc_X, sc_names] = design(2.5, 90, 'scans', 'hrf (with time derivative)', [SA SB], struct());
save('-v7', 'reference.mat', 'pm_X', 'pm_names', 'pm_deriv_X', 'pm_deriv_names', 'pm_fir_X', 'pm_fir_names', 'sc_X', 'sc_names');
disp(pm_names); disp(pm_deriv_names); disp(pm_fir_names); disp(sc_names);
disp(size(pm_X)); disp(size(pm_fir_X)); disp(size(sc_X));
