using BenchmarkDotNet.Running;

// dotnet run -c Release --project bench/PortAzure.MicroBench -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(PortAzure.Benchmarks.Sample).Assembly).Run(args);
